import { addressToBytes } from '../../model/ip-address.js';
import { SyscallError } from '../../model/errors.js';
import type { Destination } from '../../model/match-rule.js';
import { errnoName, linuxLibc } from '../../net/libc.js';
import { decodeSockaddr } from './libc.js';

/**
 * What conntrack knows of a redirected UDP flow: where the client sent it before nat
 * `redirect` rewrote the destination, and the connection mark the redirect rule copied
 * from the client's socket mark (`ct mark set meta mark`), that is the incoming records.
 *
 * UDP has no `SO_ORIGINAL_DST` (that getsockopt reads the conntrack entry of a connected
 * TCP socket); the same entry is asked for here over ctnetlink (NETLINK_NETFILTER,
 * `IPCTNL_MSG_CT_GET`), keyed by its reply tuple, which is what the listener sees: from
 * the listener's own address and port to the client's address and port. One request and
 * one reply on a netlink socket kept open for the process, per new flow (not per
 * datagram). Needs CAP_NET_ADMIN, which the nftables backend has anyway.
 */
export interface ConntrackEntry {
  readonly originalDestination: Destination;
  /**
   * Where the client's socket sent from, before any NAT (conntrack may have given the
   * datagram another source port: two destinations from one socket); undefined if the
   * kernel left it out. Who owns that socket is asked of sock_diag by it.
   */
  readonly originalSource?: Destination | undefined;
  /** The conntrack mark (`ct mark`). */
  readonly mark: number;
}

// include/uapi/linux/{netlink,netfilter/nfnetlink,netfilter/nfnetlink_conntrack}.h
const AF_NETLINK = 16;
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_CTNETLINK = 1;
const IPCTNL_MSG_CT_NEW = 0;
const IPCTNL_MSG_CT_GET = 1;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;
const CTA_TUPLE_ORIG = 1;
const CTA_TUPLE_REPLY = 2;
const CTA_MARK = 8;
const CTA_TUPLE_IP = 1;
const CTA_TUPLE_PROTO = 2;
const CTA_IP_V4_SRC = 1;
const CTA_IP_V4_DST = 2;
const CTA_IP_V6_SRC = 3;
const CTA_IP_V6_DST = 4;
const CTA_PROTO_NUM = 1;
const CTA_PROTO_SRC_PORT = 2;
const CTA_PROTO_DST_PORT = 3;
const IPPROTO_UDP = 17;
const MSG_DONTWAIT = 0x40;
const NLMSG_HEADER_BYTES = 16;
const NFGENMSG_BYTES = 4;

interface Ctnetlink {
  readonly fd: number;
  send(fd: number, buffer: Buffer, length: number, flags: number): number;
  recv(fd: number, buffer: Buffer, length: number, flags: number): number;
}

let ctnetlink: Ctnetlink | undefined;
let sequence = 0;
const reply = Buffer.alloc(4096);

function open(): Ctnetlink {
  if (ctnetlink !== undefined) return ctnetlink;
  const { koffi, lib } = linuxLibc();
  const socket = lib.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
  const fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) {
    const errno = koffi.errno();
    throw new SyscallError('socket(NETLINK_NETFILTER)', errno, errnoName(errno) ?? 'UNKNOWN');
  }
  ctnetlink = {
    fd,
    send: lib.func('intptr_t send(int fd, const void *buffer, size_t length, int flags)'),
    recv: lib.func('intptr_t recv(int fd, _Out_ void *buffer, size_t length, int flags)'),
  };
  return ctnetlink;
}

/** One netlink attribute, padded to 4 bytes. */
function attribute(type: number, value: Buffer): Buffer {
  const length = 4 + value.length;
  const out = Buffer.alloc((length + 3) & ~3);
  out.writeUInt16LE(length, 0);
  out.writeUInt16LE(type, 2);
  value.copy(out, 4);
  return out;
}

const nested = (type: number, ...children: Buffer[]): Buffer => attribute(type | NLA_F_NESTED, Buffer.concat(children));
const be16 = (value: number): Buffer => Buffer.from([value >> 8, value & 0xff]);

/** The IPCTNL_MSG_CT_GET request for the UDP entry whose reply tuple is `from` → `to`. Exported for tests. */
export function encodeReplyTupleQuery(from: Destination, to: Destination, seq: number): Buffer {
  const v6 = from.family === 6;
  const tuple = nested(
    CTA_TUPLE_REPLY,
    nested(
      CTA_TUPLE_IP,
      attribute(v6 ? CTA_IP_V6_SRC : CTA_IP_V4_SRC, addressToBytes(from.address)),
      attribute(v6 ? CTA_IP_V6_DST : CTA_IP_V4_DST, addressToBytes(to.address)),
    ),
    nested(
      CTA_TUPLE_PROTO,
      attribute(CTA_PROTO_NUM, Buffer.from([IPPROTO_UDP])),
      attribute(CTA_PROTO_SRC_PORT, be16(from.port)),
      attribute(CTA_PROTO_DST_PORT, be16(to.port)),
    ),
  );
  const header = Buffer.alloc(NLMSG_HEADER_BYTES + NFGENMSG_BYTES);
  header.writeUInt32LE(header.length + tuple.length, 0);
  header.writeUInt16LE((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, 4);
  header.writeUInt16LE(NLM_F_REQUEST, 6);
  header.writeUInt32LE(seq, 8);
  header.writeUInt8(v6 ? AF_INET6 : AF_INET, 16);
  return Buffer.concat([header, tuple]);
}

/** The attributes in `bytes`, by type (nesting flag cleared); a malformed one ends the walk. */
function attributes(bytes: Buffer): Map<number, Buffer> {
  const found = new Map<number, Buffer>();
  for (let offset = 0; offset + 4 <= bytes.length; ) {
    const length = bytes.readUInt16LE(offset);
    if (length < 4 || offset + length > bytes.length) break;
    found.set(bytes.readUInt16LE(offset + 2) & NLA_TYPE_MASK, bytes.subarray(offset + 4, offset + length));
    offset += (length + 3) & ~3;
  }
  return found;
}

/**
 * Decodes the kernel's answer (an IPCTNL_MSG_CT_NEW message, or an NLMSG_ERROR);
 * `undefined` when there is no such entry. Exported for tests: the kernel is trusted here,
 * but a short or odd answer is still an error, never a guess. `withSource` also reads the
 * original tuple's source (for the flow table's owner lookup).
 */
export function decodeEntry(message: Buffer, family: 4 | 6, options: { readonly withSource?: boolean } = {}): ConntrackEntry | undefined {
  const fail = (detail: string): never => {
    throw new SyscallError('ctnetlink(IPCTNL_MSG_CT_GET)', 0, detail);
  };
  if (message.length < NLMSG_HEADER_BYTES) fail('short reply');
  const type = message.readUInt16LE(4);
  if (type === NLMSG_ERROR) {
    const errno = -message.readInt32LE(NLMSG_HEADER_BYTES);
    if (errno === 2) return undefined; // ENOENT: no entry (expired, or not redirected)
    throw new SyscallError('ctnetlink(IPCTNL_MSG_CT_GET)', errno, errnoName(errno) ?? 'UNKNOWN');
  }
  if (type !== ((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW)) fail(`unexpected message type ${type}`);
  const length = Math.min(message.readUInt32LE(0), message.length);
  const top = attributes(message.subarray(NLMSG_HEADER_BYTES + NFGENMSG_BYTES, length));
  const original = attributes(top.get(CTA_TUPLE_ORIG) ?? fail('no original tuple'));
  const ip = attributes(original.get(CTA_TUPLE_IP) ?? fail('no addresses'));
  const proto = attributes(original.get(CTA_TUPLE_PROTO) ?? fail('no ports'));
  const address = ip.get(family === 6 ? CTA_IP_V6_DST : CTA_IP_V4_DST);
  const port = proto.get(CTA_PROTO_DST_PORT);
  if (address?.length !== (family === 6 ? 16 : 4) || port?.length !== 2) fail('malformed original tuple');
  const mark = top.get(CTA_MARK);
  const sourceAddress = ip.get(family === 6 ? CTA_IP_V6_SRC : CTA_IP_V4_SRC);
  const sourcePort = proto.get(CTA_PROTO_SRC_PORT);
  const hasSource = options.withSource === true && sourceAddress?.length === (family === 6 ? 16 : 4) && sourcePort?.length === 2;
  return {
    originalDestination: endpoint(family, address!, port!),
    ...(hasSource && { originalSource: endpoint(family, sourceAddress, sourcePort) }),
    mark: mark?.length === 4 ? mark.readUInt32BE(0) : 0,
  };
}

function endpoint(family: 4 | 6, address: Buffer, port: Buffer): Destination {
  const sockaddr = Buffer.alloc(28);
  sockaddr.writeUInt16LE(family === 6 ? AF_INET6 : AF_INET, 0);
  port.copy(sockaddr, 2);
  address.copy(sockaddr, family === 6 ? 8 : 4);
  return decodeSockaddr(sockaddr);
}

/**
 * The conntrack entry of the UDP flow the listener at `listener` received from `client`,
 * or `undefined` if there is none (the datagram was sent to the listener itself).
 */
export function lookupUdpFlow(listener: Destination, client: Destination): ConntrackEntry | undefined {
  const { koffi } = linuxLibc();
  const netlink = open();
  const seq = (sequence = (sequence + 1) >>> 0);
  const request = encodeReplyTupleQuery(listener, client, seq);
  if (netlink.send(netlink.fd, request, request.length, 0) !== request.length) {
    const errno = koffi.errno();
    throw new SyscallError('send(NETLINK_NETFILTER)', errno, errnoName(errno) ?? 'UNKNOWN');
  }
  // The kernel answers inside send(): the reply is queued by the time it returns. Replies
  // to earlier requests that were abandoned are skipped by their sequence number.
  for (let attempt = 0; attempt < 8; attempt++) {
    const received = netlink.recv(netlink.fd, reply, reply.length, MSG_DONTWAIT);
    if (received < 0) {
      const errno = koffi.errno();
      throw new SyscallError('recv(NETLINK_NETFILTER)', errno, errnoName(errno) ?? 'UNKNOWN');
    }
    const message = reply.subarray(0, received);
    if (received >= NLMSG_HEADER_BYTES && message.readUInt32LE(8) !== seq) continue;
    return decodeEntry(message, client.family, { withSource: true });
  }
  throw new SyscallError('recv(NETLINK_NETFILTER)', 0, 'no reply to this request');
}
