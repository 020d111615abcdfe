/**
 * Socket adoption: a TCP socket made outside Node (by koffi, through ws2_32 or the tests'
 * stand-in) becomes an ordinary `net.Socket`. The only module in core that touches Node
 * internals; everything it relies on is listed here.
 *
 * Why: the WFP ioctls need the accepted socket's SOCKET (to query records and context)
 * and the onward socket's SOCKET before connect (to set records). Node on Windows exposes
 * neither: `socket._handle.fd` is -1 there (`LibuvStreamWrap::GetFD` reads `uv_fileno`
 * only `#if !defined(_WIN32)`), and `new net.Socket({ fd })` cannot adopt a SOCKET, since
 * it first calls `guessHandleType(fd)`, which on Windows treats the number as a C runtime
 * file descriptor. So the backend makes and accepts its sockets itself and hands each one
 * to Node's TCP handle:
 *
 *   const { TCP, constants } = process.binding('tcp_wrap');
 *   const handle = new TCP(constants.SOCKET);
 *   handle.open(socket);                   // TCPWrap::Open → uv_tcp_open(&handle, socket)
 *   new net.Socket({ handle, … });         // as net.Server does for each accepted handle
 *
 * What that relies on, checked on Node 20.20 (libuv 1.46) and against nodejs/node's
 * src/tcp_wrap.cc (`TCPWrap::Open`), lib/net.js (the `Socket` constructor's `options.handle`
 * branch; `onconnection`, which builds accepted sockets the same way) and libuv's
 * src/win/tcp.c and src/unix/tcp.c (`uv_tcp_open`). Node 22 and 24 are not verified:
 *   - `process.binding('tcp_wrap')` is on Node's allow-list for `process.binding` (no
 *     warning, except DEP0111 under `--pending-deprecation`); it is unavailable under the
 *     permission model. `TCP`, `constants.SOCKET` and `open()` are checked at first use.
 *   - `TCPWrap::Open` reads the number as int64 and narrows it to int before
 *     `uv_tcp_open`, which takes a `uv_os_sock_t`: an fd on Linux, a SOCKET on Windows.
 *     SOCKET values are small kernel handle values, and `handleValue()` refuses any past
 *     2^31-1. On Windows, Node also remembers the value, so `_handle.fd` reads it back.
 *   - On Windows, `uv_tcp_open` checks that the SOCKET is a socket (SO_PROTOCOL_INFOW),
 *     makes it non-blocking, associates it with the loop's I/O completion port (a socket
 *     already tied to another port falls back to emulated IOCP, slower but working),
 *     and, when `getpeername` succeeds, marks it connected, readable and writable. For an
 *     unconnected socket, `uv_tcp_connect` binds it to the wildcard address first (ConnectEx
 *     needs a bound socket). Sockets must be overlapped: `WSASocketW` with
 *     `WSA_FLAG_OVERLAPPED`, or `accept()` on such a listener. Winsock is already started:
 *     libuv calls `WSAStartup` when it initialises (src/win/winsock.c).
 *   - On Linux, `uv_tcp_open` makes the fd non-blocking and refuses one the loop already
 *     watches (EEXIST); it does not check the fd's type, so this module does (fstat).
 *   - `net.Socket`'s `handle` option is not documented for sockets (it is for
 *     `server.listen`), but it is the path every accepted connection takes in lib/net.js.
 *
 * Ownership: on success the `net.Socket` owns the socket (destroying it closes the
 * SOCKET/fd); on failure nothing was taken and the caller still owns and closes it.
 * A socket is adopted once: a second `adoptSocket` of a value whose handle Node has not
 * closed yet fails with EEXIST. libuv refuses it on Linux by itself; on Windows it would
 * take it (`CreateIoCompletionPort` fails for a SOCKET already tied to the loop's port,
 * and an imported socket then falls back to emulated IOCP), leaving two owners that both
 * close the SOCKET, as the Wine lane showed. So this module keeps the values it handed to
 * a `net.Socket`, until Node closes that socket's handle: not until 'close', which comes a
 * turn of the loop later, when Windows (and Linux) may already have given the value to a
 * new socket.
 */
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import util from 'node:util';
import { BackendUnavailableError, InvalidOptionsError, SyscallError } from '../../model/errors.js';
import type { SocketHandle } from './winsock.js';

interface TcpHandle {
  open(socket: number): number;
  close(callback?: () => void): void;
  /** `uv_tcp_close_reset`, for `resetAndDestroy()`: closes without calling close(). */
  reset?(callback?: () => void): number;
}

interface TcpWrap {
  readonly TCP: new (type: number) => TcpHandle;
  readonly constants: { readonly SOCKET: number };
}

let binding: TcpWrap | undefined;

/** The sockets adopted by a `net.Socket` whose handle Node has not closed yet. */
const owned = new Set<SocketHandle>();

function tcpWrap(): TcpWrap {
  if (binding !== undefined) return binding;
  let candidate: Partial<TcpWrap> | undefined;
  try {
    candidate = (process as unknown as { binding(name: string): Partial<TcpWrap> }).binding('tcp_wrap');
  } catch (error) {
    throw new BackendUnavailableError('wfp', `process.binding('tcp_wrap') is unavailable here: ${(error as Error).message}`);
  }
  const TCP = candidate?.TCP;
  const type = candidate?.constants?.SOCKET;
  if (typeof TCP !== 'function' || typeof type !== 'number' || typeof (TCP.prototype as Partial<TcpHandle>).open !== 'function') {
    throw new BackendUnavailableError('wfp', `this Node (${process.version}) has no TCP handle with open(): socket adoption needs one`);
  }
  binding = { TCP, constants: { SOCKET: type } };
  return binding;
}

export interface AdoptOptions {
  /** An accepted (connected) socket; `false` for a new one that `connect()` will connect. */
  readonly connected: boolean;
  /** As for `net.Socket`; the backends allow half-open connections. */
  readonly allowHalfOpen: boolean;
}

/**
 * A `net.Socket` on a socket made outside Node. A connected socket comes back readable
 * and writable, as `net.Server` makes its accepted sockets; an unconnected one is to be
 * connected with `socket.connect({ host, port })` (reading starts once connected).
 */
export function adoptSocket(socket: SocketHandle, options: AdoptOptions): net.Socket {
  if (!Number.isInteger(socket) || socket < 0 || socket > 0x7fffffff) {
    throw new InvalidOptionsError(`must be a socket handle in 0..2^31-1, got ${String(socket)}`, 'socket');
  }
  const { TCP, constants } = tcpWrap();
  if (process.platform !== 'win32') assertPosixSocket(socket);
  if (owned.has(socket)) throw new SyscallError('uv_tcp_open', os.constants.errno.EEXIST, 'EEXIST');
  const handle = new TCP(constants.SOCKET);
  const status = handle.open(socket);
  if (status !== 0) {
    handle.close(); // the uv_tcp_t was initialised: release it; the socket stays the caller's
    throw new SyscallError('uv_tcp_open', Math.abs(status), util.getSystemErrorName(status));
  }
  // `handle` and `manualStart` are not in @types/node's SocketConstructorOpts: see above.
  const socketOptions = {
    handle,
    allowHalfOpen: options.allowHalfOpen,
    ...(options.connected ? { readable: true, writable: true } : { manualStart: true }),
  };
  // Node closes the socket through this handle's close() (uv_close, which closes the
  // SOCKET/fd at once, or on Windows once pending writes are cancelled) or, for
  // resetAndDestroy(), its reset(): the value is free from that call on. Own properties,
  // so only this handle is affected.
  const closeHandle = handle.close.bind(handle);
  handle.close = (callback) => {
    owned.delete(socket);
    closeHandle(callback);
  };
  if (typeof handle.reset === 'function') {
    const resetHandle = handle.reset.bind(handle);
    handle.reset = (callback) => {
      owned.delete(socket);
      return resetHandle(callback);
    };
  }
  owned.add(socket);
  return new net.Socket(socketOptions);
}

/** libuv on POSIX takes any fd; a socket made elsewhere is checked here. */
function assertPosixSocket(fd: number): void {
  let stats: fs.Stats;
  try {
    stats = fs.fstatSync(fd);
  } catch (error) {
    const { code = 'EBADF', errno = os.constants.errno.EBADF } = error as NodeJS.ErrnoException;
    throw new SyscallError('fstat', Math.abs(errno), code);
  }
  if (!stats.isSocket()) throw new SyscallError('uv_tcp_open', os.constants.errno.ENOTSOCK, 'ENOTSOCK');
}
