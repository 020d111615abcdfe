// A tiny authoritative DNS server for the real-ECH kernel test, inside the test's network
// namespace: every A query for a name under argv[4] gets argv[3]; every HTTPS query (type 65,
// RFC 9460) for such a name, "_port._https." prefixed or not, gets one ServiceMode record
// with an `ech` SvcParam carrying an ECHConfigList (draft-ietf-tls-esni §4) whose public
// name is argv[5], with an X25519 key nobody will ever decrypt with; anything else is an
// empty answer. Reports each query over IPC ({ query: { name, type } }) and { ready: true }.
//
// argv[2]: listen address; argv[3]: the A record's address; argv[4]: the zone; argv[5]: public_name.
import { generateKeyPairSync } from 'node:crypto';
import dgram from 'node:dgram';

const [listen, address, zone, publicName] = process.argv.slice(2);

const u8 = (v) => Buffer.from([v]);
const u16 = (v) => Buffer.from([v >> 8, v & 0xff]);
const vec16 = (b) => Buffer.concat([u16(b.length), b]);
const vec8 = (b) => Buffer.concat([u8(b.length), b]);

/** An ECHConfigList with one version 0xfe0d config: X25519, HKDF-SHA256, AES-128-GCM. */
function echConfigList() {
  const { publicKey } = generateKeyPairSync('x25519');
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url');
  const contents = Buffer.concat([
    u8(0x2a), // config_id
    u16(0x0020), // DHKEM(X25519, HKDF-SHA256)
    vec16(raw),
    vec16(Buffer.concat([u16(0x0001), u16(0x0001)])), // HKDF-SHA256, AES-128-GCM
    u8(0), // maximum_name_length
    vec8(Buffer.from(publicName, 'ascii')),
    vec16(Buffer.alloc(0)), // extensions
  ]);
  return vec16(Buffer.concat([u16(0xfe0d), vec16(contents)]));
}
const ECH = echConfigList();

function readName(message, at) {
  const labels = [];
  while (message[at] !== 0) {
    labels.push(message.subarray(at + 1, at + 1 + message[at]).toString('ascii'));
    at += 1 + message[at];
  }
  return { name: labels.join('.').toLowerCase(), end: at + 1 };
}

function encodeName(name) {
  return Buffer.concat([...name.split('.').map((label) => vec8(Buffer.from(label, 'ascii'))), u8(0)]);
}

function answer(query) {
  const { name, end } = readName(query, 12);
  const type = query.readUInt16BE(end);
  const question = query.subarray(12, end + 4);
  process.send({ query: { name, type } });
  const inZone = name === zone || name.endsWith(`.${zone}`);
  let rdata;
  if (inZone && type === 1) rdata = Buffer.from(address.split('.').map(Number));
  // Priority 1 (ServiceMode), then the target: "." means the owner name, which for a
  // port-prefixed query (_8443._https.name) is not the host, so that case names the host.
  else if (inZone && type === 65) rdata = Buffer.concat([u16(1), encodeName(name.replace(/^_\d+\._https\./, '')), u16(5), vec16(ECH)]);
  const header = Buffer.concat([query.subarray(0, 2), u16(0x8400 | (query.readUInt16BE(2) & 0x0100) | 0x0080), u16(1), u16(rdata ? 1 : 0), u16(0), u16(0)]);
  const records = rdata ? Buffer.concat([u16(0xc00c), u16(type), u16(1), Buffer.from([0, 0, 0, 60]), vec16(rdata)]) : Buffer.alloc(0);
  return Buffer.concat([header, question, records]);
}

const socket = dgram.createSocket('udp4');
socket.on('message', (message, peer) => {
  try {
    socket.send(answer(message), peer.port, peer.address);
  } catch (error) {
    process.send({ error: String(error) });
  }
});
socket.bind(53, listen, () => process.send({ ready: true }));
process.on('disconnect', () => process.exit(0));
