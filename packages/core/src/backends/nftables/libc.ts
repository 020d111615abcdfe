import { BackendUnavailableError, SyscallError } from '../../model/errors.js';
import { type Koffi, type LinuxLibc, errnoName, linuxLibc } from '../../net/libc.js';
import type { Destination } from '../../model/match-rule.js';

// Linux values (include/uapi/linux/socket.h, in.h, in6.h, netfilter_ipv4.h, ip6_tables.h).
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_IP = 0;
const SOL_SOCKET = 1;
const SOL_IPV6 = 41;
const SO_MARK = 36;
/** `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number, at their own levels. */
const SO_ORIGINAL_DST = 80;

interface Libc {
  readonly koffi: Koffi;
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, length: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, length: Uint32Array): number;
  close(fd: number): number;
}

let libc: Libc | undefined;

/** The libc functions this backend calls, bound on first use. */
function load(): Libc {
  if (libc !== undefined) return libc;
  let linux: LinuxLibc;
  try {
    linux = linuxLibc();
  } catch (error) {
    throw new BackendUnavailableError('nftables', (error as Error).message);
  }
  const { koffi, lib } = linux;
  libc = {
    koffi,
    socket: lib.func('int socket(int domain, int type, int protocol)'),
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t length)'),
    // Plain pointers, not _Out_/_Inout_: koffi then passes the Buffer and the Uint32Array's
    // memory as they are, where a JS array for the length is marshalled both ways (2.4 µs
    // a call against 0.7, measured; two calls per accepted connection).
    getsockopt: lib.func('int getsockopt(int fd, int level, int name, void *value, uint32_t *length)'),
    close: lib.func('int close(int fd)'),
  };
  return libc;
}

function syscallError(syscall: string, errno: number): SyscallError {
  return new SyscallError(syscall, errno, errnoName(errno) ?? 'UNKNOWN');
}

function fail(syscall: string, lib: Libc): never {
  throw syscallError(syscall, lib.koffi.errno());
}

/**
 * Scratch memory for the calls below, allocated once: each call is synchronous and reads
 * its result out before returning, so no two uses overlap.
 */
const scratch = Buffer.alloc(28); // sizeof(struct sockaddr_in6), the largest value read
const scratchLength = new Uint32Array(1);

/** The socket mark: of an accepted socket, the mark its SYN carried (`tcp_fwmark_accept`). */
export function getMark(fd: number): number {
  const lib = load();
  scratchLength[0] = 4;
  if (lib.getsockopt(fd, SOL_SOCKET, SO_MARK, scratch, scratchLength) !== 0) fail('getsockopt(SO_MARK)', lib);
  return scratch.readUInt32LE(0);
}

/**
 * Where the client meant to go before nat redirected it: `SO_ORIGINAL_DST` for IPv4,
 * `IP6T_SO_ORIGINAL_DST` for IPv6, both read from conntrack by the kernel.
 */
export function getOriginalDestination(fd: number, family: 4 | 6): Destination {
  const lib = load();
  scratch.fill(0);
  scratchLength[0] = scratch.length;
  const level = family === 6 ? SOL_IPV6 : SOL_IP;
  if (lib.getsockopt(fd, level, SO_ORIGINAL_DST, scratch, scratchLength) !== 0) {
    fail(family === 6 ? 'getsockopt(IP6T_SO_ORIGINAL_DST)' : 'getsockopt(SO_ORIGINAL_DST)', lib);
  }
  return decodeSockaddr(scratch);
}

/** `struct sockaddr_in` / `sockaddr_in6`: family in host order, port and address in network order. */
export function decodeSockaddr(bytes: Buffer): Destination {
  const family = bytes.readUInt16LE(0);
  const port = bytes.readUInt16BE(2);
  if (family === AF_INET) return { address: bytes.subarray(4, 8).join('.'), port, family: 4 };
  if (family === AF_INET6) {
    const groups: string[] = [];
    for (let i = 8; i < 24; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
    return { address: compressIpv6(groups), port, family: 6 };
  }
  throw new SyscallError('getsockopt(SO_ORIGINAL_DST)', 0, `unexpected address family ${family}`);
}

/** RFC 5952 text: the longest run of two or more zero groups becomes `::`. */
function compressIpv6(groups: string[]): string {
  let best = { start: -1, length: 0 };
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > best.length) best = { start: i, length: j - i };
    i = j;
  }
  if (best.length < 2) return groups.join(':');
  return `${groups.slice(0, best.start).join(':')}::${groups.slice(best.start + best.length).join(':')}`;
}

/**
 * A new non-blocking TCP (or UDP) socket with `SO_MARK` set, for Node to connect: the mark is the
 * record the kernel reads in every redirector's nft chain. Setting it needs CAP_NET_ADMIN
 * (or CAP_NET_RAW), which is what keeps an unprivileged process from forging records.
 */
export function openMarkedSocket(family: 4 | 6, mark: number, transport: 'tcp' | 'udp' = 'tcp'): number {
  const lib = load();
  const type = transport === 'udp' ? SOCK_DGRAM : SOCK_STREAM;
  const fd = lib.socket(family === 6 ? AF_INET6 : AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail('socket', lib);
  scratch.writeUInt32LE(mark >>> 0, 0);
  if (lib.setsockopt(fd, SOL_SOCKET, SO_MARK, scratch, 4) !== 0) {
    const errno = lib.koffi.errno(); // read before close() may overwrite it
    lib.close(fd);
    throw syscallError('setsockopt(SO_MARK)', errno);
  }
  return fd;
}

/** Closes a descriptor Node never took over. */
export function closeFd(fd: number): void {
  load().close(fd);
}

