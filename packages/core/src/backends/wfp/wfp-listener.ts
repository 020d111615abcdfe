import { SyscallError } from '../../model/errors.js';
import type { Endpoint } from '../backend.js';
import { Win32Error, Ws, win32ErrorName } from './ioctl-codes.js';
import { SOCKADDR_BYTES, decodeSockaddr, encodeSockaddr } from './sockaddr.js';
import { type SocketHandle, type Winsock, handleValue, wsaPollFd } from './winsock.js';

/** How long one wait for a connection lasts on koffi's worker thread; bounds how long a closed listener's last wait lingers. */
const POLL_TIMEOUT_MS = 250;
/** Connections taken per wake-up before yielding to the event loop. */
const ACCEPTS_PER_WAKE = 64;
/** Pause before waiting again when the wait itself failed, so a broken poll cannot spin. */
const RETRY_AFTER_POLL_ERROR_MS = 50;

export interface ListenerEvents {
  /** A new connection; the callee owns the SOCKET from here on. */
  accepted(socket: SocketHandle): void;
  /** The listener broke for good (accept failed with something other than a peer's abort). */
  failed(error: Error): void;
}

export interface WfpListener {
  readonly address: Endpoint;
  /** Stops listening at once: the SOCKET is closed synchronously, later connections are refused. */
  close(): void;
}

/**
 * A listening socket made and accepted through Winsock rather than by Node, because the
 * WFP ioctls need each accepted connection's SOCKET, which Node does not expose on
 * Windows (see adopt-socket.ts).
 *
 * Waiting never blocks the event loop: `WSAPoll` runs on koffi's worker thread with a
 * timeout, and only says "maybe ready"; `accept()` itself runs on the main thread, on a
 * non-blocking socket, and only while the listener is open. So `close()` can close the
 * SOCKET at once: a wait still running on the worker at that moment returns (at the
 * latest after POLL_TIMEOUT_MS) and its answer is ignored, whatever it was about.
 * A pending koffi async call keeps the event loop alive, as a listening net.Server does;
 * after `close()` the last wait may hold it for up to POLL_TIMEOUT_MS more.
 */
export function listenWfp(ws: Winsock, host: string, port: number, events: ListenerEvents): WfpListener {
  const family = host.includes(':') ? Ws.AF_INET6 : Ws.AF_INET;
  const listener = handleValue(
    ws.WSASocketW(family, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED | Ws.WSA_FLAG_NO_HANDLE_INHERIT),
  );
  if (listener === undefined) throw winsockError(ws, 'WSASocketW');
  let address: Endpoint;
  try {
    // Exclusive: no other process may bind the same port and take our redirected flows.
    const one = Buffer.alloc(4);
    one.writeInt32LE(1, 0);
    if (ws.setsockopt(listener, Ws.SOL_SOCKET, Ws.SO_EXCLUSIVEADDRUSE, one, 4) !== 0) throw winsockError(ws, 'setsockopt(SO_EXCLUSIVEADDRUSE)');
    const name = encodeSockaddr(host, port);
    if (ws.bind(listener, name, name.length) !== 0) throw winsockError(ws, 'bind');
    if (ws.listen(listener, Ws.SOMAXCONN) !== 0) throw winsockError(ws, 'listen');
    if (ws.ioctlsocket(listener, Ws.FIONBIO, [1]) !== 0) throw winsockError(ws, 'ioctlsocket(FIONBIO)');
    const bound = Buffer.alloc(SOCKADDR_BYTES);
    const length: [number] = [SOCKADDR_BYTES];
    if (ws.getsockname(listener, bound, length) !== 0) throw winsockError(ws, 'getsockname');
    const decoded = decodeSockaddr(bound, length[0]);
    if (decoded === undefined) throw new SyscallError('getsockname', 0, 'unexpected address family');
    address = { address: decoded.address, port: decoded.port };
  } catch (error) {
    ws.closesocket(listener);
    throw error;
  }

  let open = true;
  const fds = wsaPollFd(listener, Ws.POLLRDNORM);

  const wait = (): void => {
    ws.pollAsync(fds, 1, POLL_TIMEOUT_MS, (error, ready) => {
      if (!open) return;
      try {
        drain();
      } finally {
        // Re-armed even if a subscriber's code threw while taking a connection.
        if (open && (error !== null || ready < 0)) setTimeout(() => open && wait(), RETRY_AFTER_POLL_ERROR_MS);
        else if (open) wait();
      }
    });
  };

  const drain = (): void => {
    for (let i = 0; i < ACCEPTS_PER_WAKE && open; i++) {
      const native = ws.accept(listener, null, null);
      const socket = handleValue(native);
      if (socket !== undefined) {
        events.accepted(socket);
        continue;
      }
      const code = ws.WSAGetLastError();
      if (typeof native === 'bigint' && native !== ALL_BITS) {
        ws.closesocket(native); // a handle Node could not adopt: never seen, but never leaked
        continue;
      }
      if (code === Win32Error.WSAEWOULDBLOCK) return;
      // The peer gave up between its SYN and our accept: nothing to do, take the next one.
      if (code === Win32Error.WSAECONNRESET || code === Win32Error.WSAECONNABORTED || code === Win32Error.WSAEINTR) continue;
      close();
      events.failed(new SyscallError('accept', code, win32ErrorName(code)));
      return;
    }
  };

  const close = (): void => {
    if (!open) return;
    open = false;
    ws.closesocket(listener);
  };

  wait();
  return { address, close };
}

const ALL_BITS = 2n ** 64n - 1n;

function winsockError(ws: Winsock, call: string): SyscallError {
  const code = ws.WSAGetLastError();
  return new SyscallError(call, code, win32ErrorName(code));
}
