import net from 'node:net';
import { dial } from '../../net/dial.js';
import {
  BackendUnavailableError,
  type CoproxyError,
  ContextNotFoundError,
  InvalidOptionsError,
  RecordsMismatchError,
  SyscallError,
  unreachable,
} from '../../model/errors.js';
import { RedirectRecords } from '../../model/redirect-records.js';
import type { Destination } from '../../model/match-rule.js';
import { type AcceptedFlow, type Backend, type Endpoint, type FlowSink, type InstallSpec, type Installation, type OnwardRecords, defineBackend } from '../backend.js';
import { refuseUdp } from '../udp-support.js';
import { adoptSocket } from './adopt-socket.js';
import { Ws, win32ErrorName } from './ioctl-codes.js';
import { type RedirectIoctls, isAccessDenied, redirectIoctls } from './redirect-ioctls.js';
import { SOCKADDR_BYTES, decodeSockaddr } from './sockaddr.js';
import { listenWfp } from './wfp-listener.js';
import { type SocketHandle, type Winsock, handleValue, winsock, winsockLibraryOverride } from './winsock.js';

/**
 * The owner `context()` reports when WFP refused this redirector the context on a flow:
 * the context is another redirector's, and user mode is not told whose.
 */
export const UNKNOWN_CONTEXT_OWNER = 'another redirector (WFP does not say which)';

/** The registry's entry: the listener's host is checked at install (an IP address). */
export const wfp = defineBackend({ name: 'wfp', specify: (spec) => refuseUdp(spec, 'wfp'), open: () => wfpBackend() });

/**
 * Windows: the vendor's own WFP callout driver (out of scope) redirects connections to
 * this listener at the ALE connect-redirect layers; coproxy does the user-mode side with
 * the three redirect ioctls, through koffi and ws2_32.dll.
 *
 * - Install = listen. The match rule, the priority (the callout filter's weight) and the
 *   fail mode are the callout's to enforce; this backend cannot install them.
 * - Accepted sockets are made by Winsock, not Node (wfp-listener.ts), queried while the
 *   backend still holds the raw SOCKET: records (none: the connection was not redirected,
 *   rejected with COPROXY_RECORDS_MISMATCH, as forwarding it would loop), the original
 *   destination (`getsockopt(SOL_IP, SO_ORIGINAL_DST)`), the context; then adopted as a
 *   `net.Socket` (adopt-socket.ts).
 * - Records are an opaque OS blob. `records.redirectedBy` is `[this id]`, which is what
 *   user mode knows: this redirector redirected the flow (`stateFor(id)` is
 *   `RedirectedBySelf`). Which redirectors came before is inside the blob, and the state the
 *   callout saw (`FwpsQueryConnectionRedirectState`) is the kernel's: so `conn.state` reads
 *   `NotRedirected` even when another vendor redirected the flow first.
 * - `connectOnward()` makes a new SOCKET, sets the flow's blob on it byte for byte
 *   (`SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS`), adopts it and connects it. With
 *   `propagateRecords: false` nothing is set, as no blob of "only this redirector" can be
 *   made in user mode: the onward connection then looks new to every callout.
 * - Context: the callout's (`SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT`), else the
 *   redirector's `context` option, as on nftables. Access denied reads as another
 *   redirector's context (`COPROXY_CONTEXT_ACCESS_DENIED`, owner unknown).
 * - `source.pid` is not known in user mode (the callout sees it; it may put it in the context).
 *
 * Off Windows it throws BackendUnavailableError, unless core's tests injected their
 * Winsock stand-in (`useWinsockLibraryForTests`), which is how this file runs on Linux.
 */
export function wfpBackend(): Backend {
  if (process.platform !== 'win32' && winsockLibraryOverride() === undefined) {
    throw new BackendUnavailableError(
      'wfp',
      `it needs Windows (ws2_32.dll, and the vendor's WFP callout driver redirecting connections to this listener); this is ${process.platform}`,
    );
  }
  return backend;
}

const backend: Backend = {
  name: 'wfp',
  install: (spec, sink) => Promise.resolve().then(() => install(spec, sink)),
};

function install(spec: InstallSpec, sink: FlowSink): Installation {
  const ws = winsock(); // throws BackendUnavailableError before anything is made
  const ioctls = redirectIoctls(ws);
  const host = spec.listen.host === 'localhost' ? '127.0.0.1' : spec.listen.host;
  if (net.isIP(host) === 0) {
    throw new InvalidOptionsError(`the wfp backend listens on an IP address, got ${JSON.stringify(spec.listen.host)}`, 'listen.host');
  }
  let uninstalled = false;
  const listener = listenWfp(ws, host, spec.listen.port, {
    accepted: (socket) => {
      if (uninstalled) return void ws.closesocket(socket);
      const peer = peerName(ws, socket);
      let flow: AcceptedFlow;
      try {
        flow = acceptFlow(ws, ioctls, socket, peer, spec);
      } catch (error) {
        ws.closesocket(socket); // acceptFlow adopts last: on any failure the SOCKET is still ours
        const remote = { ...(peer !== undefined && { address: peer.address, port: peer.port }) };
        sink.rejected(error as CoproxyError, remote);
        return;
      }
      sink.accepted(flow);
    },
    failed: (error) => sink.failed(error),
  });
  return {
    listening: listener.address,
    uninstall() {
      if (uninstalled) return;
      uninstalled = true;
      listener.close(); // established flows finish on their own
    },
  };
}

/** Everything is read while the SOCKET is still the backend's; adoption comes last. */
function acceptFlow(ws: Winsock, ioctls: RedirectIoctls, socket: SocketHandle, peer: Endpoint | undefined, spec: InstallSpec): AcceptedFlow {
  const blob = ioctls.queryRecords(socket);
  // No records: WFP did not redirect this connection here; someone dialled the listener.
  if (blob === undefined) throw new RecordsMismatchError(spec.id, []);
  const destination = originalDestination(ws, socket);
  const context = flowContext(ioctls, socket, spec);
  const adopted = adoptSocket(socket, { connected: true, allowHalfOpen: true });
  const records = RedirectRecords.empty.withRedirect(spec.id);
  return {
    socket: adopted,
    originalDestination: destination,
    source: { address: peer?.address ?? adopted.remoteAddress ?? '', port: peer?.port ?? adopted.remotePort ?? 0 },
    records,
    context,
    framingBytes: 0,
    connectOnward: (onward, { timeoutMs }) => connectOnward(ws, ioctls, destination, onwardBlob(onward, blob), timeoutMs),
  };
}

/**
 * The blob the onward socket gets: the flow's own, byte for byte, when its records
 * propagate; none otherwise, as user mode cannot make a blob of "only this redirector".
 */
function onwardBlob(onward: OnwardRecords, blob: Buffer): Buffer | undefined {
  switch (onward.kind) {
    case 'propagate':
      return blob;
    case 'own-only':
      return undefined;
    default:
      return unreachable(onward);
  }
}

function flowContext(ioctls: RedirectIoctls, socket: SocketHandle, spec: InstallSpec): AcceptedFlow['context'] {
  try {
    return { owner: spec.id, bytes: ioctls.queryContext(socket, spec.id) };
  } catch (error) {
    if (error instanceof ContextNotFoundError) return spec.context === undefined ? undefined : { owner: spec.id, bytes: spec.context };
    if (isAccessDenied(error)) return { owner: UNKNOWN_CONTEXT_OWNER, bytes: Buffer.alloc(0) };
    throw error;
  }
}

/** Where the client meant to go: WFP keeps it for the redirected socket (SO_ORIGINAL_DST at SOL_IP). */
function originalDestination(ws: Winsock, socket: SocketHandle): Destination {
  const value = Buffer.alloc(SOCKADDR_BYTES);
  const length: [number] = [SOCKADDR_BYTES];
  if (ws.getsockopt(socket, Ws.SOL_IP, Ws.SO_ORIGINAL_DST, value, length) !== 0) {
    const code = ws.WSAGetLastError();
    throw new SyscallError('getsockopt(SO_ORIGINAL_DST)', code, win32ErrorName(code));
  }
  const destination = decodeSockaddr(value, length[0]);
  if (destination === undefined) throw new SyscallError('getsockopt(SO_ORIGINAL_DST)', 0, 'unexpected address family');
  return destination;
}

function peerName(ws: Winsock, socket: SocketHandle): Endpoint | undefined {
  const value = Buffer.alloc(SOCKADDR_BYTES);
  const length: [number] = [SOCKADDR_BYTES];
  if (ws.getpeername(socket, value, length) !== 0) return undefined;
  const decoded = decodeSockaddr(value, length[0]);
  return decoded === undefined ? undefined : { address: decoded.address, port: decoded.port };
}

/** A new SOCKET, the flow's records set on it before connect, adopted by Node, connected. */
function connectOnward(
  ws: Winsock,
  ioctls: RedirectIoctls,
  destination: Destination,
  blob: Buffer | undefined,
  timeoutMs: number,
): Promise<net.Socket> {
  return dial({ host: destination.address, port: destination.port, family: destination.family, allowHalfOpen: true, timeoutMs }, undefined, (options) => {
    const family = destination.family === 6 ? Ws.AF_INET6 : Ws.AF_INET;
    const socket = handleValue(
      ws.WSASocketW(family, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED | Ws.WSA_FLAG_NO_HANDLE_INHERIT),
    );
    if (socket === undefined) {
      const code = ws.WSAGetLastError();
      throw new SyscallError('WSASocketW', code, win32ErrorName(code));
    }
    let adopted: net.Socket;
    try {
      if (blob !== undefined) ioctls.setRecords(socket, blob);
      adopted = adoptSocket(socket, { connected: false, allowHalfOpen: true });
    } catch (error) {
      ws.closesocket(socket);
      throw error;
    }
    return adopted.connect(options);
  });
}
