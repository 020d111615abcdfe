import type net from 'node:net';
import os from 'node:os';
import { type Koffi, errnoName, linuxLibc } from './libc.js';

/**
 * Moving bytes from one TCP socket to another inside the kernel, with splice(2) through a
 * pipe, instead of reading them into the process and writing them out again. On Linux a
 * splice from a TCP socket into a pipe takes references to the received pages, and a
 * splice from the pipe into a TCP socket sends those pages: the proxy copies nothing.
 *
 * Node has no splice, and its sockets belong to libuv, which reads them whenever they are
 * readable. The two are combined without taking a socket from libuv: Node reads as usual,
 * and the caller, having written what Node read, calls {@link spliceBurst} to move, at
 * once and without blocking, what else is waiting in the source. libuv then reads the
 * source again and finds it empty (or at its end, which it reports as usual), so Node
 * stays the only one that waits for readiness and sees the end of the stream. A burst
 * only starts when nothing is queued on the destination, so bytes keep their order.
 *
 * One pipe serves the whole process: a burst is synchronous and leaves the pipe empty
 * (what the destination would not take is read back and handed to the caller to write
 * the usual way), so no two bursts ever share it.
 *
 * Linux only. Off where koffi or splice is missing, for TLS sockets (their file
 * descriptor carries ciphertext), and when `COPROXY_KERNEL_SPLICE=0`.
 */

// Linux values (include/uapi/linux/fcntl.h, splice.h, asm-generic/fcntl.h).
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
const SPLICE_F_MOVE = 1;
const SPLICE_F_NONBLOCK = 2;
const { EAGAIN, EINTR } = os.constants.errno;

/** What the process asks its pipe to hold: the most an unprivileged process may by default. */
const PIPE_BYTES = 1024 * 1024;

/**
 * The most one burst moves: bounds how long one busy connection holds the event loop
 * (libuv may read the same socket up to 32 times per turn, each read followed by a burst).
 */
export const MAX_BURST_BYTES = 512 * 1024;

/**
 * A burst's first step from the source: what the destination is asked to take before the
 * steps grow. What the destination refuses is read back into the process, so a slow
 * reader makes a connection hold at most about one step, as the copying path holds one read.
 */
const FIRST_STEP_BYTES = 64 * 1024;

interface Splicer {
  readonly koffi: Koffi;
  splice(fdIn: number, offIn: null, fdOut: number, offOut: null, length: number, flags: number): number;
  read(fd: number, buffer: Buffer, length: number): number;
  close(fd: number): number;
  /** The pipe's read and write ends. */
  readonly pipe: readonly [number, number];
  readonly capacity: number;
}

type SpliceState = { readonly splicer: Splicer } | { readonly splicer?: undefined; readonly reason: string };

/** The pipe, once opened; `state` may still say splicing is off. */
let opened: SpliceState | undefined;
let state: SpliceState | undefined;

/** Loaded on first use: a process that never relays loads no native module for it. */
function load(): SpliceState {
  state ??= opened ??= open();
  return state;
}

function open(): SpliceState {
  if (process.env.COPROXY_KERNEL_SPLICE === '0') return { reason: 'COPROXY_KERNEL_SPLICE=0' };
  try {
    const { koffi, lib } = linuxLibc();
    const pipe2 = lib.func('int pipe2(int *fds, int flags)') as (fds: Int32Array, flags: number) => number;
    const fcntl = lib.func('int fcntl(int fd, int cmd, ...)') as (...args: unknown[]) => number;
    const fds = new Int32Array([-1, -1]);
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) !== 0) return { reason: `pipe2() failed, errno ${koffi.errno()}` };
    // Asking for more than the system allows fails and leaves the default (64 KiB): still works.
    fcntl(fds[1], F_SETPIPE_SZ, 'int', PIPE_BYTES);
    const capacity = fcntl(fds[1], F_GETPIPE_SZ);
    const splicer: Splicer = {
      koffi,
      splice: lib.func('intptr_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t len, unsigned int flags)'),
      read: lib.func('intptr_t read(int fd, void *buf, size_t count)'),
      close: lib.func('int close(int fd)'),
      pipe: [fds[0]!, fds[1]!],
      capacity: capacity > 0 ? capacity : 64 * 1024,
    };
    return { splicer };
  } catch (error) {
    return { reason: `splice(2) through koffi: ${(error as Error).message}` };
  }
}

/** Whether relays splice in the kernel in this process, and if not, why. */
export function kernelSpliceStatus(): { readonly available: true } | { readonly available: false; readonly reason: string } {
  const loaded = load();
  return loaded.splicer !== undefined ? { available: true } : { available: false, reason: loaded.reason };
}

/** For tests and benchmarks: turn splicing off (or on again, where it can be) in this process. */
export function setKernelSplice(enabled: boolean): void {
  state = enabled ? (opened ??= open()) : { reason: 'turned off by setKernelSplice(false)' };
}

/**
 * The pipe could not be emptied: bytes of one connection would open the next burst of
 * another. Splicing stops for the life of the process; relays go on copying.
 */
function retire(splicer: Splicer, why: string): void {
  splicer.close(splicer.pipe[0]);
  splicer.close(splicer.pipe[1]);
  opened = state = { reason: why };
}

export interface SpliceBurst {
  /** Bytes taken from the source, `rest` included. */
  readonly taken: number;
  /** Bytes the destination took. */
  readonly sent: number;
  /**
   * Bytes the destination would not take at once (its send buffer was full), read back
   * from the pipe: the caller writes them the usual way, before anything else.
   */
  readonly rest?: Buffer;
  /** The source's FIN came; libuv's next read of it reports the end as usual. */
  readonly ended: boolean;
  /** A splice failed: which socket it was, and the error to destroy that socket with. */
  readonly failed?: { readonly side: 'source' | 'destination'; readonly error: NodeJS.ErrnoException };
}

interface SocketHandle {
  readonly fd?: number;
}

/** Bytes each socket sent or received by splice, which Node's `bytesRead`/`bytesWritten` do not see. */
const spliced = new WeakMap<net.Socket, { read: number; written: number }>();

/** What a socket read and wrote, spliced bytes included. */
export function socketBytes(socket: net.Socket): { readonly read: number; readonly written: number } {
  const extra = spliced.get(socket);
  return { read: socket.bytesRead + (extra?.read ?? 0), written: socket.bytesWritten + (extra?.written ?? 0) };
}

function count(socket: net.Socket, field: 'read' | 'written', bytes: number): void {
  const counts = spliced.get(socket);
  if (counts === undefined) spliced.set(socket, { read: field === 'read' ? bytes : 0, written: field === 'written' ? bytes : 0 });
  else counts[field] += bytes;
}

/** The file descriptor of a plain TCP socket, or undefined (TLS, a pipe, Windows, closed). */
function tcpDescriptor(socket: net.Socket): number | undefined {
  if ((socket as net.Socket & { encrypted?: boolean }).encrypted === true) return undefined;
  const handle = (socket as net.Socket & { _handle?: SocketHandle | null })._handle;
  if (handle === undefined || handle === null || handle.constructor.name !== 'TCP') return undefined;
  const fd = handle.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Moves up to `limit` bytes ({@link MAX_BURST_BYTES} at most) waiting in `from` to `to` in
 * the kernel, without blocking.
 * Returns undefined when it cannot here (see the module's comment), when `from` holds bytes
 * Node has read but not yet delivered, or when `to` still has writes queued: the caller
 * then goes on the usual way. Call it right after Node read
 * from `from` and everything read was written.
 */
export function spliceBurst(from: net.Socket, to: net.Socket, limit = MAX_BURST_BYTES): SpliceBurst | undefined {
  const { splicer } = load();
  limit = Math.min(limit, MAX_BURST_BYTES);
  if (splicer === undefined || limit <= 0 || from.destroyed || to.destroyed || to.writableEnded) return undefined;
  // Bytes Node has read but not yet handed on come before anything still in the socket.
  if (from.readableLength > 0 || to.writableLength > 0) return undefined;
  const source = tcpDescriptor(from);
  const destination = tcpDescriptor(to);
  if (source === undefined || destination === undefined) return undefined;
  const [pipeOut, pipeIn] = splicer.pipe;
  let taken = 0;
  let sent = 0;
  let step = FIRST_STEP_BYTES;
  let result: Omit<SpliceBurst, 'sent'> | undefined;
  while (result === undefined && taken < limit) {
    const got = splicer.splice(source, null, pipeIn, null, Math.min(limit - taken, step, splicer.capacity), SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (got === 0) {
      result = { taken, ended: true };
      break;
    }
    if (got < 0) {
      const errno = splicer.koffi.errno();
      if (errno === EINTR) continue;
      if (errno !== EAGAIN) result = { taken, ended: false, failed: { side: 'source', error: errnoError(errno) } };
      break;
    }
    taken += got;
    let left = got;
    while (left > 0) {
      const put = splicer.splice(pipeOut, null, destination, null, left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (put > 0) {
        left -= put;
        sent += put;
        continue;
      }
      const errno = put < 0 ? splicer.koffi.errno() : EAGAIN;
      if (errno === EINTR) continue;
      const rest = takeBack(splicer, left);
      if (errno !== EAGAIN) result = { taken, ended: false, failed: { side: 'destination', error: errnoError(errno) } };
      else if (rest !== undefined) result = { taken, rest, ended: false };
      else result = { taken, ended: false, failed: { side: 'destination', error: lostInPipe(left) } };
      break;
    }
    // The destination took the whole step: the next may be larger.
    step = Math.min(step * 2, MAX_BURST_BYTES);
  }
  count(from, 'read', taken);
  count(to, 'written', sent);
  return { ...(result ?? { taken, ended: false }), sent };
}

/**
 * Reads the bytes left in the pipe back into the process, which leaves it empty for the
 * next burst. Should the pipe not give them all back, splicing stops for good (undefined).
 */
function takeBack(splicer: Splicer, length: number): Buffer | undefined {
  const buffer = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    const got = splicer.read(splicer.pipe[0], buffer.subarray(filled), length - filled);
    if (got > 0) filled += got;
    else if (got < 0 && splicer.koffi.errno() === EINTR) continue;
    else break;
  }
  if (filled === length) return buffer;
  retire(splicer, `the pipe gave back ${filled} of ${length} bytes: splicing stopped`);
  return undefined;
}

function lostInPipe(bytes: number): NodeJS.ErrnoException {
  return Object.assign(new Error(`splice: ${bytes} bytes could not be read back from the pipe; splicing stopped`), { code: 'EIO', syscall: 'read' });
}

/** The error Node itself would have raised for a failed read or write of the socket. */
function errnoError(errno: number): NodeJS.ErrnoException {
  const code = errnoName(errno) ?? `E${errno}`;
  return Object.assign(new Error(`splice ${code}`), { errno: -errno, code, syscall: 'splice' });
}
