// Wireshark's dissector as the independent judge of our fingerprints: TCP payloads are
// written into a pcap file (IPv4 over the raw link type, no capture privileges needed) and
// read back with `tshark -T json`. Not part of the build.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

const HINT = 'the fingerprint tests need tshark (Debian: apt-get install -y tshark; .ci/run installs it when missing)';

/** The tshark version line, or an error saying how to get tshark. */
export async function tsharkVersion(): Promise<string> {
  try {
    const { stdout } = await run('tshark', ['--version'], { timeout: 20_000 });
    return stdout.split('\n')[0] ?? '';
  } catch (error) {
    throw new Error(`tshark is not usable (${(error as Error).message}): ${HINT}`, { cause: error });
  }
}

/** One TCP flow from a client port to port 443, its payload in the given segments. */
export interface Flow {
  readonly clientPort: number;
  readonly segments: readonly Buffer[];
}

const LINKTYPE_RAW = 101;

/** A classic pcap file's global header: version 2.4, snap length 65,535, raw IPv packets. */
export function pcapGlobalHeader(): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65_535, 16);
  header.writeUInt32LE(LINKTYPE_RAW, 20);
  return header;
}

/** A classic pcap file (microsecond timestamps) holding each flow's segments as IPv4/TCP packets. */
export function pcap(flows: readonly Flow[]): Buffer {
  const out: Buffer[] = [pcapGlobalHeader()];
  let time = 1_700_000_000;
  for (const flow of flows) {
    let sequence = 1000;
    for (const payload of flow.segments) {
      if (payload.length > 65_535 - 40) throw new RangeError('a segment too large for one IPv4 packet');
      const ip = Buffer.alloc(20);
      ip[0] = 0x45; // IPv4, 5-word header
      ip.writeUInt16BE(40 + payload.length, 2);
      ip[8] = 64; // TTL
      ip[9] = 6; // TCP
      ip.set([127, 0, 0, 1], 12);
      ip.set([127, 0, 0, 1], 16);
      ip.writeUInt16BE(ipChecksum(ip), 10);
      const tcp = Buffer.alloc(20);
      tcp.writeUInt16BE(flow.clientPort, 0);
      tcp.writeUInt16BE(443, 2);
      tcp.writeUInt32BE(sequence, 4);
      tcp[12] = 5 << 4; // data offset
      tcp[13] = 0x18; // PSH, ACK
      tcp.writeUInt16BE(65_535, 14);
      sequence += payload.length;
      const pcapRecord = Buffer.alloc(16);
      pcapRecord.writeUInt32LE(time++, 0);
      pcapRecord.writeUInt32LE(40 + payload.length, 8);
      pcapRecord.writeUInt32LE(40 + payload.length, 12);
      out.push(pcapRecord, ip, tcp, payload);
    }
  }
  return Buffer.concat(out);
}

function ipChecksum(header: Buffer): number {
  let sum = 0;
  for (let i = 0; i < header.length; i += 2) sum += header.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  return ~sum & 0xffff;
}

/** The fields tshark dissected from each ClientHello in `file`, by TCP source port. */
export async function dissectClientHellos(file: string, fields: readonly string[]): Promise<Map<number, Record<string, string[]>>> {
  const args = ['-r', file, '-d', 'tcp.port==443,tls', '-Y', 'tls.handshake.type == 1', '-T', 'json', '-e', 'tcp.srcport', ...fields.flatMap((field) => ['-e', field])];
  const { stdout } = await run('tshark', args, { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
  const packets = JSON.parse(stdout) as { _source: { layers: Record<string, string[]> } }[];
  const byPort = new Map<number, Record<string, string[]>>();
  for (const packet of packets) {
    const layers = packet._source.layers;
    const port = Number(layers['tcp.srcport']?.[0]);
    if (byPort.has(port)) throw new Error(`tshark found two ClientHellos on port ${port}`);
    byPort.set(port, layers);
  }
  return byPort;
}
