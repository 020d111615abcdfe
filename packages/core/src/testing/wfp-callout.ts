// The test playing the WFP callout, shared by the WFP backend's two lanes: the Linux tests
// (backends/wfp/wfp-backend.test.ts, vitest, the gcc stand-in) and the Wine lane's
// (backends/wfp/wfp-backend.wine-test.ts, node:test on the Windows build of Node, the PE
// stand-in). Both drive the same stand-in controls, so the scene is written once: an origin
// that reports the records SET on the socket that reached it, a client whose connection
// "the callout" redirected, a vendor that relays every flow onward. Node's assert, not a
// runner's, so that either runner can load it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import type { Subscription } from 'rxjs';
import { adoptSocket } from '../backends/wfp/adopt-socket.js';
import { Ws } from '../backends/wfp/ioctl-codes.js';
import { SOCKADDR_BYTES, decodeSockaddr, encodeSockaddr } from '../backends/wfp/sockaddr.js';
import { type SocketHandle, type Winsock, handleValue } from '../backends/wfp/winsock.js';
import { relay } from '../net/relay.js';
import type { AcceptedConnection } from '../redirector/accepted-connection.js';
import { createRedirector } from '../redirector/redirector.js';
import type { RedirectorEvent } from '../redirector/redirector-events.js';
import type { StandIn } from './wfp-stand-in.js';

/** A new overlapped TCP socket, as the backend makes them. */
export function newSocket(ws: Winsock, family: number = Ws.AF_INET): SocketHandle {
  const socket = handleValue(ws.WSASocketW(family, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED));
  assert.ok(socket !== undefined, `WSASocketW failed: ${ws.WSAGetLastError()}`);
  return socket;
}

export function localPort(ws: Winsock, socket: SocketHandle): number {
  const name = Buffer.alloc(SOCKADDR_BYTES);
  const length: [number] = [SOCKADDR_BYTES];
  assert.equal(ws.getsockname(socket, name, length), 0, `getsockname: ${ws.WSAGetLastError()}`);
  const decoded = decodeSockaddr(name, length[0]);
  assert.ok(decoded !== undefined);
  return decoded.port;
}

/** An opaque blob, as a callout would attach: bigger than the first query buffer, so the query negotiates. */
export function recordsBlob(seed: number, length = 5000): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 13 + seed) & 0xff;
  return out;
}

export interface Origin {
  readonly port: number;
  /** Per connection: what it received, and the records the stand-in saw SET on the socket that reached it. */
  readonly seen: { bytes: string; records: Buffer | undefined }[];
  close(): Promise<void>;
}

/** An origin that answers `origin:<what it received>` once the client ends. */
export async function startOrigin(standIn: StandIn, host = '127.0.0.1'): Promise<Origin> {
  const seen: Origin['seen'] = [];
  const server = net.createServer((socket) => {
    // Looked up at once, while the onward socket (the one the records were set on) is open.
    const records = standIn.recordsSetOnPort(socket.remotePort ?? 0);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => {
      const bytes = Buffer.concat(chunks).toString();
      seen.push({ bytes, records });
      socket.end(`origin:${bytes}`);
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** What "the callout" attaches to a flow; `to` is its original destination. */
export interface CalloutFlow {
  readonly to: Origin;
  readonly records: Buffer | undefined;
  readonly context?: Buffer | undefined;
  readonly contextError?: number | undefined;
}

/**
 * A client whose connection the "callout" redirected to the listener: its socket is bound
 * first, so the stand-in can attach the flow's destination, records and context to its
 * port, then adopted and connected (the adoption path, once more).
 */
export async function redirectedClient(
  { ws, standIn }: { ws: Winsock; standIn: StandIn },
  listenerPort: number,
  flow: CalloutFlow,
  host = '127.0.0.1',
): Promise<net.Socket> {
  const fresh = newSocket(ws, net.isIPv6(host) ? Ws.AF_INET6 : Ws.AF_INET);
  const name = encodeSockaddr(host, 0);
  assert.equal(ws.bind(fresh, name, name.length), 0);
  standIn.redirect({
    clientPort: localPort(ws, fresh),
    originalDestination: encodeSockaddr(host, flow.to.port),
    records: flow.records,
    context: flow.context,
    ...(flow.contextError !== undefined && { contextError: flow.contextError }),
  });
  const socket = adoptSocket(fresh, { connected: false, allowHalfOpen: true });
  socket.connect({ host, port: listenerPort });
  await once(socket, 'connect');
  return socket;
}

/** Sends `payload`, ends, and gives back all the reply. */
export async function exchange(socket: net.Socket, payload: string): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  const ended = once(socket, 'end');
  socket.end(payload);
  await ended;
  return Buffer.concat(chunks).toString();
}

export interface VendorOptions {
  readonly id?: string;
  readonly propagateRecords?: boolean;
  readonly context?: Buffer;
  /** The listener's host (default: the backend's). */
  readonly host?: string;
}

export interface WfpVendor {
  readonly redirector: ReturnType<typeof createRedirector>;
  readonly accepted: AcceptedConnection[];
  readonly events: RedirectorEvent[];
}

/**
 * A vendor on the WFP backend: takes every flow, opens the onward leg, relays. Its
 * subscriptions go into `scope.subscriptions` (and the redirector into `scope.redirectors`,
 * when given) for the test's teardown.
 */
export function wfpVendor(
  scope: { subscriptions: Subscription[]; redirectors?: AsyncDisposable[] },
  options: VendorOptions = {},
): WfpVendor {
  const redirector = createRedirector({
    id: options.id ?? 'acme-av',
    priority: 10,
    backend: 'wfp',
    ...(options.host !== undefined && { listen: { host: options.host } }),
    ...(options.context !== undefined && { context: options.context }),
  });
  scope.redirectors?.push(redirector);
  const accepted: AcceptedConnection[] = [];
  const events: RedirectorEvent[] = [];
  scope.subscriptions.push(redirector.events$.subscribe((event) => events.push(event)));
  scope.subscriptions.push(
    redirector.accepted$.subscribe((connection) => {
      accepted.push(connection);
      connection.connectOnward({ propagateRecords: options.propagateRecords ?? true }).then(
        (upstream) => void relay(connection.socket, upstream),
        () => connection.socket.destroy(),
      );
    }),
  );
  return { redirector, accepted, events };
}
