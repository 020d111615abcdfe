import type net from 'node:net';
import { type AcceptedConnection, type AcceptedDatagramFlow, type Endpoint, type OnwardDatagramSocket, errorCodeOf, relay } from '@coproxy/core';
import { type VendorRedirectorOptions, createVendorRedirector } from '@coproxy/core/vendor';
import pino, { type Logger } from 'pino';
import { type Observable, Subject } from 'rxjs';
import { ClientConnection, type ConnectionHooks } from './client-connection.js';
import { HttpProxyOptionsError, ProxyErrorCode } from './errors.js';
import type { HttpExchange, HttpProxyEvent, HttpProxyOwnEvent, UnrecognisedPolicy } from './events.js';
import type { ConnectionInfo, Inspector } from './inspector.js';
import { HttpProxyMetrics } from './metrics.js';
import { type RuleFile, loadRules, parseRules, rulesInspector } from './rules.js';
import { serveH2c } from './h2c-session.js';
import { sniff, sniffPreface } from './sniff.js';

/**
 * The redirector's options from core's vendor kit (`match` default here: every TCP
 * connection to ports 80 and 8080), then the proxy's own.
 */
export interface HttpProxyOptions extends VendorRedirectorOptions {
  /** A rule file's content or its path; evaluated before `inspectors`. */
  readonly rules?: RuleFile | string;
  readonly inspectors?: readonly Inspector[];
  /** No response head (or no byte either way) from the origin for this long → 504. Default 30 000. */
  readonly originTimeoutMs?: number;
  /** No connection to the origin within this long → 504. Default 10 000. */
  readonly connectTimeoutMs?: number;
  /**
   * A client silent this long after connecting (a server-first protocol) is handled as
   * `unrecognised` says. Default 1000.
   */
  readonly sniffTimeoutMs?: number;
  /**
   * What happens to a connection whose first bytes are neither HTTP nor TLS, or whose client
   * says nothing within `sniffTimeoutMs`: `block` closes it unread (the default: an inspected
   * port never turns into an uninspected relay), `relay` passes it through byte for byte.
   * Either way it is logged, counted (`coproxy_http_unrecognised_total{action}`) and
   * reported as an `unrecognised` event. UDP flows (a `match.udpPorts`) follow it too: this
   * proxy reads no datagram protocol, so `block` rejects them (`reject()`) and `relay`
   * forwards their datagrams both ways unchanged.
   */
  readonly unrecognised?: UnrecognisedPolicy;
  /** Largest request body: a larger Content-Length, or chunk sizes adding up past it, get a 413. Default 2^40 (1 TiB). */
  readonly maxBodySize?: number;
  /** Largest request head accepted (431 beyond). Default 16 384. */
  readonly maxHeaderSize?: number;
  /** A request head must arrive within this long (408 beyond). Default 60 000. */
  readonly headersTimeoutMs?: number;
  /** A client connection with no byte either way for this long is closed. Default 120 000. */
  readonly idleTimeoutMs?: number;
  /** pino logger; default silent. */
  readonly logger?: Logger;
  /**
   * Default true. `false` makes the proxy's onward connections carry only its own
   * redirect, as a vendor that merely excludes itself would: for demonstrating the loop
   * that records prevent (the testbed's `--drop-records`).
   */
  readonly propagateRecords?: boolean;
}

export interface HttpProxy extends AsyncDisposable {
  readonly id: string;
  readonly exchanges$: Observable<HttpExchange>;
  readonly events$: Observable<HttpProxyEvent>;
  readonly metrics: HttpProxyMetrics;
  /** Resolves once the redirect rule is installed and the listener accepts connections. */
  listening(): Promise<Endpoint>;
  /** Removes the redirect rule; open connections finish on their own. */
  close(): Promise<void>;
}

/**
 * A transparent inspecting HTTP/1.1 proxy on a coproxy redirector. Each redirected
 * connection is sniffed: HTTP goes through Node's own parser (keep-alive, chunked and
 * fixed-length bodies streamed both ways, `Expect: 100-continue`, `Upgrade` inspected at
 * the handshake then tunnelled); TLS is relayed byte for byte for a TLS vendor to inspect;
 * anything else follows the `unrecognised` policy (closed unread by default).
 * Requests are inspected by the rule file and the inspectors; the origin is reached over
 * `connectOnward()`, so the flow's redirect records go with it.
 */
export function createHttpProxy(options: HttpProxyOptions): HttpProxy {
  const settings = validate(options);
  const logger = options.logger ?? pino({ level: 'silent' });
  const propagateRecords = options.propagateRecords ?? true;
  const metrics = new HttpProxyMetrics();
  const exchanges = new Subject<HttpExchange>();
  const inspectors: Inspector[] = [
    ...(options.rules === undefined ? [] : [rulesInspector(typeof options.rules === 'string' ? loadRules(options.rules) : parseRules(options.rules))]),
    ...(options.inspectors ?? []),
  ];
  // The kit wires the redirector: accepted connections to onAccepted, its events and ours in
  // one events$, the redirector's metrics (accepted, open, records depth, bytes, rejected,
  // onward failures) counted from its events, listening() and close().
  const vendor = createVendorRedirector<HttpProxyOwnEvent>({
    options,
    defaultMatch: { ports: [80, 8080] },
    metrics,
    onAccepted: (conn) => void onAccepted(conn),
    onDatagramFlow: (flow) => onDatagramFlow(flow),
    onFailed: (error) => {
      logger.error({ err: error }, 'redirector failed');
      exchanges.error(error);
    },
  });
  const emitEvent = (event: HttpProxyOwnEvent): void => vendor.emit(event);
  /** The exchange log: every finished exchange, logged and given to `exchanges$`. */
  const logExchange = (exchange: HttpExchange): void => {
    if (exchange.error !== undefined) logger.warn({ exchange }, 'exchange failed');
    else logger.info({ exchange }, 'exchange');
    if (exchanges.observed) exchanges.next(exchange);
  };
  const countError = (code: string): void => metrics.errors.inc({ code });
  const hooks: ConnectionHooks = {
    settings,
    inspectors,
    inspectsResponses: inspectors.some((inspector) => inspector.inspectResponse !== undefined),
    propagateRecords,
    metrics,
    logger,
    emitEvent,
    // Built only for someone: a subscriber, or a log level that prints it.
    wantsExchanges: (failed) => exchanges.observed || logger.isLevelEnabled(failed ? 'warn' : 'info'),
    onExchange: logExchange,
    countError,
  };
  // Request heads that take longer than headersTimeoutMs get a 408: one sweep for all
  // connections rather than a timer per request.
  const live = new Set<ClientConnection>();
  const sweep = setInterval(
    () => {
      const now = Date.now();
      for (const connection of live) connection.checkHeadDeadline(now);
    },
    Math.max(25, Math.min(1000, settings.headersTimeoutMs / 4)),
  ).unref();

  function connectionInfo(conn: AcceptedConnection | AcceptedDatagramFlow): ConnectionInfo {
    return {
      id: conn.id,
      source: { address: conn.source.address, port: conn.source.port },
      destination: conn.originalDestination,
      redirectedBy: conn.records.redirectedBy,
    };
  }

  async function onAccepted(conn: AcceptedConnection): Promise<void> {
    const info = connectionInfo(conn);
    const sniffed = await sniff(conn.socket, settings.sniffTimeoutMs);
    switch (sniffed.kind) {
      case 'closed':
        conn.socket.destroy();
        return;
      case 'tls':
        // Not this vendor's to inspect: a TLS vendor before or after it in the chain is.
        metrics.connections.inc({ kind: 'opaque' });
        emitEvent({ type: 'connection-kind', connectionId: conn.id, kind: 'opaque', protocol: 'tls' });
        return passThrough(conn, info, sniffed.head);
      case 'unrecognised':
        return unrecognised(conn, info, sniffed.head, sniffed.reason);
      case 'http':
        break;
      default:
        return unreachable(sniffed);
    }
    metrics.connections.inc({ kind: 'http' });
    // HTTP/2 with prior knowledge: its preface starts like a request (`PRI`), so it is told apart here.
    const preface = await sniffPreface(conn.socket, sniffed.head, settings.sniffTimeoutMs);
    if (preface.h2) {
      emitEvent({ type: 'connection-kind', connectionId: conn.id, kind: 'http', protocol: 'h2c' });
      serveH2c(conn, info, preface.head, hooks);
      return;
    }
    emitEvent({ type: 'connection-kind', connectionId: conn.id, kind: 'http', protocol: 'http' });
    const connection = new ClientConnection(conn, info, hooks, (ended) => {
      live.delete(ended);
      if (closed && live.size === 0) clearInterval(sweep);
    });
    live.add(connection);
    connection.start(preface.head);
    // A client that half-closed while its first bytes were read for the preface: its 'end' was spent there.
    if (preface.ended) conn.socket.emit('end');
  }

  /** The `unrecognised` policy: logged, counted, reported, then relayed or closed unread. */
  async function unrecognised(conn: AcceptedConnection, info: ConnectionInfo, head: Buffer, reason: 'bytes' | 'silent'): Promise<void> {
    const action = settings.unrecognised;
    const firstBytes = head.subarray(0, 16).toString('hex');
    metrics.unrecognised.inc({ action });
    metrics.connections.inc({ kind: action === 'relay' ? 'opaque' : 'blocked' });
    logger[action === 'block' ? 'warn' : 'info']({ connectionId: conn.id, source: info.source, destination: info.destination, reason, firstBytes, action }, 'unrecognised protocol');
    emitEvent({ type: 'unrecognised', connectionId: conn.id, action, reason, firstBytes });
    emitEvent({ type: 'connection-kind', connectionId: conn.id, kind: action === 'relay' ? 'opaque' : 'blocked', protocol: 'unrecognised' });
    switch (action) {
      case 'relay':
        return passThrough(conn, info, head);
      case 'block':
        conn.socket.destroy();
        return;
      default:
        return unreachable(action);
    }
  }

  async function passThrough(conn: AcceptedConnection, info: ConnectionInfo, head: Buffer): Promise<void> {
    const startedAt = Date.now();
    let upstream: net.Socket;
    try {
      upstream = await conn.connectOnward({ timeoutMs: settings.connectTimeoutMs, propagateRecords });
    } catch (error) {
      conn.socket.destroy();
      const code = errorCodeOf(error, ProxyErrorCode.OriginUnreachable);
      countError(code);
      emitEvent({ type: 'exchange-failed', connectionId: conn.id, code, message: (error as Error).message });
      logExchange({ kind: 'opaque', connection: info, sequence: 1, error: { code, message: (error as Error).message }, startedAt, durationMs: Date.now() - startedAt });
      return;
    }
    if (head.length > 0) upstream.write(head);
    conn.socket.resume();
    const result = await relay(conn.socket, upstream);
    logExchange({
      kind: 'opaque',
      connection: info,
      sequence: 1,
      // From the relay, not the socket: the socket's bytesRead also counts the redirect layer's framing.
      tunnel: { bytesFromClient: head.length + result.fromClient, bytesToClient: result.toClient },
      ...(result.error !== undefined && { error: { code: errorCodeOf(result.error, ProxyErrorCode.RelayReset), message: result.error.message } }),
      startedAt,
      durationMs: Date.now() - startedAt,
    });
  }

  /**
   * A UDP flow: no datagram protocol is one this proxy inspects, so every flow is
   * unrecognised and the policy decides at its first datagram (a flow exists only once one
   * came). `block` rejects the flow (on nftables the client's next datagram gets ICMP port
   * unreachable); `relay` opens the onward socket, carrying the records, and forwards every
   * datagram both ways unchanged until the flow ends (idle, or the origin refused).
   */
  function onDatagramFlow(flow: AcceptedDatagramFlow): void {
    const info = connectionInfo(flow);
    const action = settings.unrecognised;
    const startedAt = Date.now();
    /** Client datagrams that came while the onward socket was being opened, sent once it is. */
    const pending: Buffer[] = [];
    let pendingDropped = 0;
    let onward: OnwardDatagramSocket | undefined;
    let decided = false;
    let ended = false;
    let failure: Error | undefined;
    const finish = (): void => {
      if (action !== 'relay') return;
      const counts = onward?.counts;
      const dropped = pendingDropped > 0 ? { code: ProxyErrorCode.UdpDatagramsDropped, message: `${pendingDropped} datagrams dropped while the onward socket was opened` } : undefined;
      const error = failure === undefined ? dropped : { code: errorCodeOf(failure, ProxyErrorCode.OriginUnreachable), message: failure.message };
      logExchange({
        kind: 'opaque',
        connection: info,
        sequence: 1,
        transport: 'udp',
        tunnel: { bytesFromClient: counts?.bytesOut ?? 0, bytesToClient: counts?.bytesIn ?? 0 },
        datagrams: { fromClient: counts?.datagramsOut ?? 0, toClient: counts?.datagramsIn ?? 0 },
        ...(error !== undefined && { error }),
        startedAt,
        durationMs: Date.now() - startedAt,
      });
    };
    const open = async (): Promise<void> => {
      let socket: OnwardDatagramSocket;
      try {
        socket = await flow.connectOnward({ propagateRecords });
      } catch (error) {
        failure = error as Error;
        const code = errorCodeOf(error, ProxyErrorCode.OriginUnreachable);
        countError(code);
        emitEvent({ type: 'exchange-failed', connectionId: flow.id, code, message: failure.message });
        flow.close();
        return;
      }
      if (ended) return; // core closed the socket with the flow
      onward = socket;
      for (const datagram of pending.splice(0)) socket.send(datagram);
      socket.datagrams$.subscribe({
        next: (datagram) => flow.send(datagram),
        // ECONNREFUSED: the origin answered ICMP port unreachable; nothing more will come.
        error: (error: unknown) => {
          failure ??= error as Error;
          countError(errorCodeOf(error, ProxyErrorCode.RelayReset));
          flow.close();
        },
      });
    };
    flow.datagrams$.subscribe({
      next: (datagram) => {
        if (!decided) {
          decided = true;
          const firstBytes = datagram.subarray(0, 16).toString('hex');
          metrics.unrecognised.inc({ action });
          metrics.connections.inc({ kind: action === 'relay' ? 'opaque' : 'blocked' });
          logger[action === 'block' ? 'warn' : 'info'](
            { connectionId: flow.id, source: info.source, destination: info.destination, reason: 'datagram', transport: 'udp', firstBytes, action },
            'unrecognised protocol',
          );
          emitEvent({ type: 'unrecognised', connectionId: flow.id, action, reason: 'datagram', firstBytes, transport: 'udp' });
          emitEvent({ type: 'connection-kind', connectionId: flow.id, kind: action === 'relay' ? 'opaque' : 'blocked', protocol: 'unrecognised' });
          if (action === 'block') {
            // After this callback: reject() completes the stream this datagram came on.
            queueMicrotask(() => flow.reject('unrecognised: a UDP flow'));
            return;
          }
          void open();
        }
        if (action === 'block') return;
        if (onward !== undefined) onward.send(datagram);
        else if (pending.length < MAX_PENDING_DATAGRAMS) pending.push(datagram);
        else pendingDropped++;
      },
      complete: () => {
        ended = true;
        finish();
      },
    });
  }

  let closed = false;
  // The kit counts refusals in coproxy_http_rejected_total; this vendor's errors_total has
  // always counted them too, by the same code, and still does.
  const rejectedSubscription = vendor.redirector.events$.subscribe((event) => {
    if (event.type === 'rejected') countError(event.error.code);
  });
  // Reported through exchanges$ (an error) and listening() (a rejection); logged here so
  // that a caller who awaits neither does not meet an unhandled rejection.
  vendor.listening().catch((error: unknown) => logger.debug({ err: error }, 'install failed'));

  return {
    id: options.id,
    exchanges$: exchanges.asObservable(),
    events$: vendor.events$,
    metrics,
    listening: () => vendor.listening(),
    async close() {
      if (closed) return;
      closed = true;
      await vendor.close();
      rejectedSubscription.unsubscribe();
      if (live.size === 0) clearInterval(sweep); // else once the last open connection ends
      exchanges.complete();
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
}

/** Client datagrams of one UDP flow held while its onward socket opens; more are dropped (UDP has no backpressure). */
const MAX_PENDING_DATAGRAMS = 64;

interface Settings {
  readonly unrecognised: UnrecognisedPolicy;
  readonly maxBodySize: number;
  readonly originTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly sniffTimeoutMs: number;
  readonly maxHeaderSize: number;
  readonly headersTimeoutMs: number;
  readonly idleTimeoutMs: number;
}

function validate(options: HttpProxyOptions): Settings {
  const positive = (name: Exclude<keyof HttpProxyOptions & keyof Settings, 'unrecognised'>, fallback: number): number => {
    const value = options[name] ?? fallback;
    if (!Number.isInteger(value) || value <= 0) throw new HttpProxyOptionsError(name, `must be a positive integer, got ${String(value)}`);
    return value;
  };
  const unrecognised = options.unrecognised ?? 'block';
  if (unrecognised !== 'block' && unrecognised !== 'relay') throw new HttpProxyOptionsError('unrecognised', `must be 'block' or 'relay', got ${String(unrecognised)}`);
  const maxBodySize = positive('maxBodySize', 2 ** 40);
  if (maxBodySize > Number.MAX_SAFE_INTEGER) throw new HttpProxyOptionsError('maxBodySize', `must be at most ${Number.MAX_SAFE_INTEGER}`);
  return {
    unrecognised,
    maxBodySize,
    originTimeoutMs: positive('originTimeoutMs', 30_000),
    connectTimeoutMs: positive('connectTimeoutMs', 10_000),
    sniffTimeoutMs: positive('sniffTimeoutMs', 1000),
    maxHeaderSize: positive('maxHeaderSize', 16_384),
    headersTimeoutMs: positive('headersTimeoutMs', 60_000),
    idleTimeoutMs: positive('idleTimeoutMs', 120_000),
  };
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
