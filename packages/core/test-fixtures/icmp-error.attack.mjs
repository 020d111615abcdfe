// Sends one ICMPv4 "destination unreachable" about a UDP datagram, as a router (or an
// attacker who guessed the ports) would: to <udpSource>, quoting a datagram from
// <udpSource>:<sourcePort> to <udpDestination>:<destinationPort>. Root, inside a test's
// network namespace. Raw socket through koffi (core's own dependency), so no other tool.
// argv: <udpSource> <sourcePort> <udpDestination> <destinationPort> <code> [nextHopMtu]
//   code 4: fragmentation needed (with nextHopMtu), 3: port unreachable, 1: host unreachable
import { createRequire } from 'node:module';
import net from 'node:net';

const [source, sourcePort, destination, destinationPort, code, mtu = '1280'] = process.argv.slice(2);
const koffi = createRequire(import.meta.url)('koffi');
const libc = koffi.load('libc.so.6');
const socket = libc.func('int socket(int domain, int type, int protocol)');
const sendto = libc.func('intptr_t sendto(int fd, const void *buffer, size_t length, int flags, const void *address, uint32_t addressLength)');

function checksum(bytes) {
  let sum = 0;
  for (let i = 0; i < bytes.length; i += 2) sum += (bytes[i] << 8) + (bytes[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

const ipv4 = (address) => Buffer.from(address.split('.').map(Number));
if (!net.isIPv4(source) || !net.isIPv4(destination)) throw new Error('IPv4 addresses only');
// The quoted datagram: its IP header and the first 8 bytes of its UDP header (RFC 792).
const ip = Buffer.alloc(20);
ip[0] = 0x45;
ip.writeUInt16BE(20 + 8 + 16, 2);
ip.writeUInt16BE(0x4000, 6); // DF
ip[8] = 64;
ip[9] = 17;
ipv4(source).copy(ip, 12);
ipv4(destination).copy(ip, 16);
ip.writeUInt16BE(checksum(ip), 10);
const udp = Buffer.alloc(8);
udp.writeUInt16BE(Number(sourcePort), 0);
udp.writeUInt16BE(Number(destinationPort), 2);
udp.writeUInt16BE(8 + 16, 4);
const icmp = Buffer.concat([Buffer.from([3, Number(code), 0, 0, 0, 0]), Buffer.alloc(2), ip, udp]);
if (Number(code) === 4) icmp.writeUInt16BE(Number(mtu), 6);
icmp.writeUInt16BE(checksum(icmp), 2);

const fd = socket(2 /* AF_INET */, 3 /* SOCK_RAW */, 1 /* IPPROTO_ICMP */);
if (fd < 0) throw new Error(`socket(SOCK_RAW): errno ${koffi.errno()}`);
const to = Buffer.alloc(16);
to.writeUInt16LE(2, 0);
ipv4(source).copy(to, 4);
if (sendto(fd, icmp, icmp.length, 0, to, to.length) !== icmp.length) throw new Error(`sendto: errno ${koffi.errno()}`);
