// Wireshark's QUIC dissector as the independent judge of the QUIC Initial reader: client
// datagrams are written into a pcap file (IPv4/UDP over the raw link type, no capture
// privileges needed) and read back with `tshark -T json`, which decrypts the Initials
// itself, reassembles their CRYPTO frames and dissects the ClientHello. Not part of the build.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { pcapGlobalHeader } from './tshark.js';

const run = promisify(execFile);


/** A classic pcap file holding `datagrams` as IPv4/UDP packets from `clientPort` to port 443. */
export function udpPcap(datagrams: readonly Buffer[], clientPort = 50_000): Buffer {
  const out: Buffer[] = [pcapGlobalHeader()];
  let time = 1_700_000_000;
  for (const payload of datagrams) {
    if (payload.length > 65_535 - 28) throw new RangeError('a datagram too large for one IPv4 packet');
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(28 + payload.length, 2);
    ip[8] = 64;
    ip[9] = 17; // UDP
    ip.set([10, 200, 0, 1], 12);
    ip.set([10, 200, 0, 1], 16);
    let sum = 0;
    for (let i = 0; i < 20; i += 2) sum += ip.readUInt16BE(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    ip.writeUInt16BE(~sum & 0xffff, 10);
    const udp = Buffer.alloc(8);
    udp.writeUInt16BE(clientPort, 0);
    udp.writeUInt16BE(443, 2);
    udp.writeUInt16BE(8 + payload.length, 4); // checksum 0: none (IPv4)
    const record = Buffer.alloc(16);
    record.writeUInt32LE(time++, 0);
    record.writeUInt32LE(28 + payload.length, 8);
    record.writeUInt32LE(28 + payload.length, 12);
    out.push(record, ip, udp, payload);
  }
  return Buffer.concat(out);
}

/** The fields tshark dissected from the (one) ClientHello in the QUIC Initials of `file`. */
export async function dissectQuicClientHello(file: string, fields: readonly string[]): Promise<Record<string, string[]>> {
  const args = ['-r', file, '-d', 'udp.port==443,quic', '-Y', 'tls.handshake.type == 1', '-T', 'json', ...fields.flatMap((field) => ['-e', field])];
  const { stdout } = await run('tshark', args, { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
  const packets = JSON.parse(stdout) as { _source: { layers: Record<string, string[]> } }[];
  if (packets.length !== 1) throw new Error(`tshark found ${packets.length} ClientHellos, not one`);
  return packets[0]!._source.layers;
}

/** The fields `ja4FromTshark` reads. */
export const JA4_FIELDS = [
  'tls.handshake.ciphersuite',
  'tls.handshake.extension.type',
  'tls.handshake.sig_hash_alg',
  'tls.handshake.extensions_alpn_str',
  'tls.handshake.extensions.supported_version',
  'tls.handshake.extensions_server_name',
] as const;

const grease = (value: number): boolean => (value & 0x0f0f) === 0x0a0a && value >> 8 === (value & 0xff);
const sha12 = (text: string): string => (text === '' ? '000000000000' : createHash('sha256').update(text).digest('hex').slice(0, 12));

/**
 * JA4 (FoxIO's JA4+ spec, read from the spec's text, not from fingerprint.ts) built from
 * tshark's dissection: the numbers are tshark's reading of the bytes, so a parser fault of
 * ours shows as a difference.
 */
export function ja4FromTshark(layers: Record<string, string[]>, transport: 'q' | 't'): string {
  const numbers = (field: string): number[] => (layers[field] ?? []).map((value) => Number(value)).filter((value) => !grease(value));
  const hex4 = (value: number): string => value.toString(16).padStart(4, '0');
  const ciphers = numbers('tls.handshake.ciphersuite');
  const extensions = numbers('tls.handshake.extension.type');
  const versions = numbers('tls.handshake.extensions.supported_version');
  const version = versions.includes(0x0304) ? '13' : '12';
  const alpn = layers['tls.handshake.extensions_alpn_str']?.[0] ?? '';
  const alpnCode = alpn === '' ? '00' : `${alpn[0]}${alpn[alpn.length - 1]}`;
  const two = (n: number): string => String(Math.min(n, 99)).padStart(2, '0');
  const a = `${transport}${version}${extensions.includes(0) ? 'd' : 'i'}${two(ciphers.length)}${two(extensions.length)}${alpnCode}`;
  const b = sha12(ciphers.map(hex4).sort().join(','));
  const sorted = extensions.filter((type) => type !== 0x0000 && type !== 0x0010).map(hex4).sort().join(',');
  const signatures = numbers('tls.handshake.sig_hash_alg').map(hex4).join(',');
  const c = sha12(signatures === '' ? sorted : `${sorted}_${signatures}`);
  return `${a}_${b}_${c}`;
}
