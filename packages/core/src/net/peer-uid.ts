import net from 'node:net';
import { addressToBytes } from '../model/ip-address.js';
import { linuxLibc } from './libc.js';

/**
 * The uid owning the other end of a local TCP connection, asked of the kernel with one
 * exact `sock_diag` lookup (NETLINK_SOCK_DIAG, `SOCK_DIAG_BY_FAMILY` with the 4-tuple; what
 * `ss` uses). Linux gives no `SO_PEERCRED` for TCP; /proc/net/tcp would answer too, but
 * reading it is a walk of every socket on the host per connection, while this lookup is
 * one hash probe in the kernel and two system calls on one netlink socket kept open for
 * the process. Needs no privilege.
 *
 * Answers only for a peer in this network namespace (a loopback client); `undefined` when
 * the platform cannot say: not Linux, koffi missing, the peer remote or already gone.
 */

// include/uapi/linux/{netlink,sock_diag,inet_diag}.h, socket.h, in.h
const AF_NETLINK = 16;
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;
const MSG_DONTWAIT = 0x40;
const NLMSG_HEADER_BYTES = 16;
/** struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid (48 bytes). */
const REQUEST_BYTES = NLMSG_HEADER_BYTES + 8 + 48;
/** In the reply, inet_diag_msg's uid: after family…retrans (4), the sockid (48), expires, rqueue, wqueue (12). */
const REPLY_UID_OFFSET = NLMSG_HEADER_BYTES + 4 + 48 + 12;

interface SockDiag {
  readonly fd: number;
  send(fd: number, buffer: Buffer, length: number, flags: number): number;
  recv(fd: number, buffer: Buffer, length: number, flags: number): number;
}

/**
 * undefined: not tried yet; null: this platform cannot answer, do not try again. The
 * netlink socket is opened once and kept for the life of the process (close-on-exec).
 */
let diag: SockDiag | null | undefined;
let sequence = 0;
const request = Buffer.alloc(REQUEST_BYTES);
const reply = Buffer.alloc(1024);

function open(): SockDiag | null {
  if (diag !== undefined) return diag;
  try {
    const { lib } = linuxLibc();
    const socket = lib.func('int socket(int domain, int type, int protocol)') as (d: number, t: number, p: number) => number;
    const fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return (diag = null);
    diag = {
      fd,
      send: lib.func('intptr_t send(int fd, const void *buffer, size_t length, int flags)'),
      recv: lib.func('intptr_t recv(int fd, _Out_ void *buffer, size_t length, int flags)'),
    };
  } catch {
    diag = null; // not Linux, or koffi/libc not loadable: peer credentials are not available here
  }
  return diag;
}

/**
 * The uid of the process that owns the socket whose local end is `peer` and whose remote
 * end is `local` (the accepted socket's two ends, seen from the other side).
 */
export function tcpPeerUid(peer: { address: string; port: number }, local: { address: string; port: number }): number | undefined {
  return peerUid(peer, local, IPPROTO_TCP);
}

/**
 * The same for the socket that sent a datagram to `local` from `peer` (the embedded
 * backend's datagram listener). The kernel's UDP lookup is the receive path's: it finds
 * the socket that would receive a datagram from its `src` to its `dst`, so the ends go
 * the other way round than for TCP (peer in `dst`); with them as for TCP it would find
 * the listener itself and answer the vendor's own uid for everyone.
 */
export function udpPeerUid(peer: { address: string; port: number }, local: { address: string; port: number }): number | undefined {
  return peerUid(local, peer, IPPROTO_UDP);
}

function peerUid(peer: { address: string; port: number }, local: { address: string; port: number }, protocol: number): number | undefined {
  const family = net.isIP(peer.address);
  if (family === 0 || net.isIP(local.address) !== family) return undefined;
  const lib = open();
  if (lib === null) return undefined;
  const seq = (sequence = (sequence + 1) >>> 0);
  request.fill(0);
  request.writeUInt32LE(REQUEST_BYTES, 0);
  request.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
  request.writeUInt16LE(NLM_F_REQUEST, 6);
  request.writeUInt32LE(seq, 8);
  let at = NLMSG_HEADER_BYTES;
  request[at] = family === 6 ? AF_INET6 : AF_INET;
  request[at + 1] = protocol;
  request.writeUInt32LE(0xffffffff, at + 4); // every TCP state
  at += 8;
  request.writeUInt16BE(peer.port, at);
  request.writeUInt16BE(local.port, at + 2);
  addressToBytes(peer.address).copy(request, at + 4);
  addressToBytes(local.address).copy(request, at + 20);
  request.writeUInt32LE(0xffffffff, at + 40); // INET_DIAG_NOCOOKIE: find it by its addresses
  request.writeUInt32LE(0xffffffff, at + 44);
  if (Number(lib.send(lib.fd, request, REQUEST_BYTES, 0)) !== REQUEST_BYTES) return undefined;
  // The kernel answers an exact lookup while handling send(): the reply is queued already.
  // Replies to earlier requests that were not read (none expected) are skipped, so one
  // stray reply cannot shift every later answer by one.
  for (let stale = 0; stale < 8; stale++) {
    const length = Number(lib.recv(lib.fd, reply, reply.length, MSG_DONTWAIT));
    if (length < NLMSG_HEADER_BYTES) return undefined; // EAGAIN or an error: no answer
    if (reply.readUInt32LE(8) !== seq) continue;
    if (reply.readUInt16LE(4) === NLMSG_ERROR) return undefined; // ENOENT: gone, or not in this namespace
    if (reply.readUInt16LE(4) !== SOCK_DIAG_BY_FAMILY || length < REPLY_UID_OFFSET + 4) return undefined;
    return reply.readUInt32LE(REPLY_UID_OFFSET);
  }
  return undefined;
}
