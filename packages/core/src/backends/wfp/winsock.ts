import { createRequire } from 'node:module';
import type KoffiModule from 'koffi';
import { BackendUnavailableError } from '../../model/errors.js';

type Koffi = typeof KoffiModule;

/**
 * A Winsock `SOCKET` as a JS number. On 64-bit Windows a SOCKET is pointer-sized, but its
 * value is a kernel handle, and Node's `TCP.open()` takes an int anyway (adopt-socket.ts);
 * a value outside 0..2^31-1 is refused where a handle enters JS (`handleValue`).
 */
export type SocketHandle = number;

/** Pointer-sized integers come back from koffi as a number, or a bigint past 2^53. */
export type NativeSocket = number | bigint;

/**
 * The part of ws2_32.dll the WFP backend calls, with the Windows ABI: `SOCKET` is
 * `uintptr_t`, `DWORD` `uint32_t`, `long` 32 bits (LLP64), `WSAAPI` is `__stdcall` (which
 * koffi ignores off 32-bit x86). Every call fails with `SOCKET_ERROR` (-1) or
 * `INVALID_SOCKET` and leaves its code for `WSAGetLastError()`.
 *
 * Reading the code in a separate koffi call is sound: Winsock's last error is the
 * thread's Win32 last error, and koffi (since 2.6.10) saves it after each native call and
 * restores it before the next, so Node and V8 running in between cannot clobber it.
 * Every call here is made on the main thread, except `pollAsync`.
 */
export interface Winsock {
  /** The library these functions come from: `ws2_32.dll`, or a stand-in in the tests. */
  readonly library: string;
  WSAIoctl(
    socket: SocketHandle,
    code: number,
    input: Buffer | null,
    inputLength: number,
    output: Buffer | null,
    outputLength: number,
    bytesReturned: [number],
    overlapped: null,
    completionRoutine: null,
  ): number;
  WSAGetLastError(): number;
  WSASocketW(family: number, type: number, protocol: number, protocolInfo: null, group: number, flags: number): NativeSocket;
  bind(socket: SocketHandle, name: Buffer, nameLength: number): number;
  listen(socket: SocketHandle, backlog: number): number;
  accept(socket: SocketHandle, address: Buffer | null, addressLength: [number] | null): NativeSocket;
  closesocket(socket: NativeSocket): number;
  ioctlsocket(socket: SocketHandle, command: number, argument: [number]): number;
  getsockname(socket: SocketHandle, name: Buffer, nameLength: [number]): number;
  getpeername(socket: SocketHandle, name: Buffer, nameLength: [number]): number;
  getsockopt(socket: SocketHandle, level: number, name: number, value: Buffer, length: [number]): number;
  setsockopt(socket: SocketHandle, level: number, name: number, value: Buffer, length: number): number;
  /**
   * `WSAPoll` on one of koffi's worker threads, so waiting for a connection never blocks
   * the event loop. `fds` is a `WSAPOLLFD` array (`wsaPollFd()`); `done` runs on the main
   * thread.
   */
  pollAsync(fds: Buffer, count: number, timeoutMs: number, done: (error: unknown, ready: number) => void): void;
}

export const DEFAULT_WINSOCK_LIBRARY = 'ws2_32.dll';

let override: string | undefined;
const loaded = new Map<string, Winsock>();

/**
 * @internal For core's tests only, never in the public options: load the Winsock
 * functions from this library instead of ws2_32.dll (on Linux, the stand-in the tests
 * build), which also makes the WFP backend available off Windows. `undefined` restores
 * the default.
 */
export function useWinsockLibraryForTests(path: string | undefined): void {
  override = path;
}

/** @internal The stand-in library in use, if a test set one. */
export function winsockLibraryOverride(): string | undefined {
  return override;
}

/**
 * The Winsock functions, loaded on first use (importing core never loads a native
 * module) and cached per library.
 */
export function winsock(): Winsock {
  const path = override ?? DEFAULT_WINSOCK_LIBRARY;
  const cached = loaded.get(path);
  if (cached !== undefined) return cached;
  const bound = bind(path);
  loaded.set(path, bound);
  return bound;
}

function bind(path: string): Winsock {
  let koffi: Koffi;
  let lib: ReturnType<Koffi['load']>;
  try {
    koffi = createRequire(import.meta.url)('koffi') as Koffi;
    lib = koffi.load(path);
  } catch (error) {
    throw new BackendUnavailableError('wfp', `cannot load koffi or ${path}: ${(error as Error).message}`);
  }
  const poll = lib.func('int __stdcall WSAPoll(void *fds, uint32_t count, int timeout)');
  return {
    library: path,
    WSAIoctl: lib.func(
      'int __stdcall WSAIoctl(uintptr_t s, uint32_t code, const void *input, uint32_t inputLength, ' +
        'void *output, uint32_t outputLength, _Out_ uint32_t *bytesReturned, void *overlapped, void *completionRoutine)',
    ),
    WSAGetLastError: lib.func('int __stdcall WSAGetLastError(void)'),
    WSASocketW: lib.func(
      'uintptr_t __stdcall WSASocketW(int af, int type, int protocol, void *protocolInfo, uint32_t group, uint32_t flags)',
    ),
    bind: lib.func('int __stdcall bind(uintptr_t s, const void *name, int nameLength)'),
    listen: lib.func('int __stdcall listen(uintptr_t s, int backlog)'),
    accept: lib.func('uintptr_t __stdcall accept(uintptr_t s, void *address, _Inout_ int *addressLength)'),
    closesocket: lib.func('int __stdcall closesocket(uintptr_t s)'),
    ioctlsocket: lib.func('int __stdcall ioctlsocket(uintptr_t s, int32_t command, _Inout_ uint32_t *argument)'),
    getsockname: lib.func('int __stdcall getsockname(uintptr_t s, void *name, _Inout_ int *nameLength)'),
    getpeername: lib.func('int __stdcall getpeername(uintptr_t s, void *name, _Inout_ int *nameLength)'),
    getsockopt: lib.func('int __stdcall getsockopt(uintptr_t s, int level, int name, void *value, _Inout_ int *length)'),
    setsockopt: lib.func('int __stdcall setsockopt(uintptr_t s, int level, int name, const void *value, int length)'),
    pollAsync: (fds, count, timeoutMs, done) => {
      poll.async(fds, count, timeoutMs, done);
    },
  };
}

/** `sizeof(WSAPOLLFD)`: a pointer-sized SOCKET, two SHORTs, padded to the pointer's alignment. */
const POINTER_BYTES = process.arch === 'ia32' || process.arch === 'arm' ? 4 : 8;
const WSAPOLLFD_BYTES = POINTER_BYTES * 2;

/** One `WSAPOLLFD { SOCKET fd; SHORT events; SHORT revents; }` for `pollAsync`. */
export function wsaPollFd(socket: SocketHandle, events: number): Buffer {
  const out = Buffer.alloc(WSAPOLLFD_BYTES);
  if (POINTER_BYTES === 8) out.writeBigUInt64LE(BigInt(socket), 0);
  else out.writeUInt32LE(socket, 0);
  out.writeInt16LE(events, POINTER_BYTES);
  return out;
}

/**
 * A SOCKET from koffi as a handle JS can use, or `undefined` for `INVALID_SOCKET` (all
 * bits set) and for any value Node could not adopt (past 2^31-1; never seen in practice,
 * as Windows hands out small handle values).
 */
export function handleValue(native: NativeSocket): SocketHandle | undefined {
  const value = typeof native === 'bigint' ? (native <= 0x7fffffffn ? Number(native) : -1) : native;
  return Number.isInteger(value) && value >= 0 && value <= 0x7fffffff ? value : undefined;
}
