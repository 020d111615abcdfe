import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  type AcceptedConnection,
  type BackendName,
  type Endpoint,
  type FailMode,
  type MatchRule,
  type RedirectorEvent,
  createRedirector,
  relay,
} from '@coproxy/core';
import pino, { type Logger } from 'pino';
import { Observable, Subject, type Subscription } from 'rxjs';
import { HttpProxyOptionsError, ProxyErrorCode } from './errors.js';
import { type ConnectionInfo, type Decision, type Inspector, type RequestInfo, type ResponseInfo, decide } from './inspector.js';
import { HttpProxyMetrics } from './metrics.js';
import { type RuleFile, loadRules, parseRules, rulesInspector } from './rules.js';
import { sniff } from './sniff.js';

export interface HttpProxyOptions {
  /** The redirector id, `[a-z0-9-]{1,32}`. */
  readonly id: string;
  readonly priority: number;
  /** Which connections to take; default every TCP connection to ports 80 and 8080. */
  readonly match?: MatchRule;
  /** Default `embedded`. */
  readonly backend?: BackendName;
  readonly failMode?: FailMode;
  /** Embedded backend: the registry directory. */
  readonly registry?: string;
  /** nftables backend: the mark mask shared by every vendor on the host. */
  readonly markMask?: number;
  /** A rule file's content or its path; evaluated before `inspectors`. */
  readonly rules?: RuleFile | string;
  readonly inspectors?: readonly Inspector[];
  /** No response head (or no byte either way) from the origin for this long → 504. Default 30 000. */
  readonly originTimeoutMs?: number;
  /** No connection to the origin within this long → 504. Default 10 000. */
  readonly connectTimeoutMs?: number;
  /** A client silent this long after connecting is passed through as opaque. Default 1000. */
  readonly sniffTimeoutMs?: number;
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

export interface HttpExchange {
  readonly kind: 'http' | 'upgrade' | 'opaque';
  readonly connection: ConnectionInfo;
  /** 1 for the first exchange on a connection, then 2, 3… (keep-alive). */
  readonly sequence: number;
  readonly request?: {
    readonly method: string;
    readonly url: string;
    readonly host: string | undefined;
    readonly headers: http.IncomingHttpHeaders;
    /** Body bytes received from the client. */
    readonly bodyBytes: number;
  };
  readonly response?: {
    readonly status: number;
    readonly headers?: http.IncomingHttpHeaders;
    /** Body bytes sent to the client. */
    readonly bodyBytes: number;
  };
  readonly decision?: Decision;
  /** Opaque and upgraded connections: bytes relayed each way. */
  readonly tunnel?: { readonly bytesFromClient: number; readonly bytesToClient: number };
  readonly error?: { readonly code: string; readonly message: string };
  readonly startedAt: number;
  readonly durationMs: number;
}

export type HttpProxyEvent =
  | RedirectorEvent
  | { readonly type: 'connection-kind'; readonly connectionId: string; readonly kind: 'http' | 'opaque' }
  | { readonly type: 'client-error'; readonly connectionId: string; readonly code: string; readonly status?: number }
  | { readonly type: 'exchange-failed'; readonly connectionId: string; readonly code: string; readonly message: string; readonly status?: number };

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

const ALLOW: Decision = Object.freeze({ action: 'allow', by: Object.freeze([]) });

/** The headers a proxy never forwards as they are: they describe one hop (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'transfer-encoding']);

/** How long a client that sent a malformed request may take to close after the answer. */
const CLIENT_ERROR_GRACE_MS = 2000;

interface ConnectionState {
  readonly conn: AcceptedConnection;
  readonly info: ConnectionInfo;
  readonly agent: OnwardAgent;
  sequence: number;
  /** Requests whose response has not finished or closed yet. */
  inFlight: number;
}

/**
 * The agent of one client connection: its requests go to the origin over connections
 * opened with `connectOnward()`, so they carry the flow's records; one at a time, kept
 * alive, so a keep-alive client gets a keep-alive origin connection.
 */
class OnwardAgent extends http.Agent {
  constructor(
    private readonly conn: AcceptedConnection,
    private readonly timeoutMs: number,
    private readonly propagateRecords: boolean,
  ) {
    super({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
  }

  override createConnection(_options: unknown, callback: (error: Error | null, socket?: Duplex) => void): undefined {
    this.conn.connectOnward({ timeoutMs: this.timeoutMs, propagateRecords: this.propagateRecords }).then(
      (socket) => callback(null, socket),
      (error: Error) => callback(error),
    );
    return undefined;
  }
}

/**
 * A transparent inspecting HTTP/1.1 proxy on a coproxy redirector. Each redirected
 * connection is sniffed: HTTP goes through Node's own parser (keep-alive, chunked and
 * fixed-length bodies streamed both ways, `Expect: 100-continue`, `Upgrade` inspected at
 * the handshake then tunnelled); anything else is relayed byte for byte as opaque.
 * Requests are inspected by the rule file and the inspectors; the origin is reached over
 * `connectOnward()`, so the flow's redirect records go with it.
 */
export function createHttpProxy(options: HttpProxyOptions): HttpProxy {
  const settings = validate(options);
  const logger = options.logger ?? pino({ level: 'silent' });
  const propagateRecords = options.propagateRecords ?? true;
  const metrics = new HttpProxyMetrics();
  const exchanges = new Subject<HttpExchange>();
  const proxyEvents = new Subject<HttpProxyEvent>();
  const inspectors: Inspector[] = [
    ...(options.rules === undefined ? [] : [rulesInspector(typeof options.rules === 'string' ? loadRules(options.rules) : parseRules(options.rules))]),
    ...(options.inspectors ?? []),
  ];
  const redirector = createRedirector({
    id: options.id,
    priority: options.priority,
    match: options.match ?? { ports: [80, 8080] },
    ...(options.backend !== undefined && { backend: options.backend }),
    ...(options.failMode !== undefined && { failMode: options.failMode }),
    ...(options.registry !== undefined && { registry: options.registry }),
    ...(options.markMask !== undefined && { markMask: options.markMask }),
  });
  const states = new WeakMap<net.Socket, ConnectionState>();

  const server = http.createServer({
    maxHeaderSize: settings.maxHeaderSize,
    requestTimeout: 0, // bodies may be large and slow; idle and header timeouts bound abuse
    headersTimeout: settings.headersTimeoutMs,
    // Node checks the header timeout on this interval (default 30 s): a shorter timeout
    // would otherwise be enforced only at the next 30 s tick.
    connectionsCheckingInterval: Math.min(30_000, settings.headersTimeoutMs),
    keepAliveTimeout: settings.idleTimeoutMs,
  });
  server.timeout = settings.idleTimeoutMs;
  // A client may half-close once its request is sent (RFC 9112 §9.6 lets it): answer, then
  // close. Node's default aborts the request at the client's FIN, so the answer was lost.
  (server as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  // Connections are handed over with emit('connection'), never accepted by this server,
  // so it never emits 'listening', which is what starts Node's header-timeout checks.
  server.emit('listening');

  const emitEvent = (event: HttpProxyEvent): void => {
    if (proxyEvents.observed) proxyEvents.next(event);
  };
  const record = (exchange: HttpExchange): void => {
    if (exchange.error !== undefined) logger.warn({ exchange }, 'exchange failed');
    else logger.info({ exchange }, 'exchange');
    if (exchanges.observed) exchanges.next(exchange);
  };
  const countError = (code: string): void => metrics.errors.inc({ code });

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => void onRequest(req, res, false));
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => void onRequest(req, res, true));
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void onUpgrade(req, socket, head));
  server.on('connect', (req: http.IncomingMessage, socket: net.Socket) => {
    // A transparent proxy sees what clients send their origins; CONNECT is for explicit proxies.
    const state = states.get(socket);
    socket.end('HTTP/1.1 501 Not Implemented\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    countError('CONNECT_METHOD');
    if (state !== undefined) emitEvent({ type: 'client-error', connectionId: state.info.id, code: 'CONNECT_METHOD', status: 501 });
  });
  server.on('clientError', (error: NodeJS.ErrnoException & { bytesParsed?: number }, socket: Duplex) => {
    const state = states.get(socket as net.Socket);
    const code = error.code ?? 'UNKNOWN';
    if (code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return; // the client went away between requests: nothing to answer, nothing lost
    }
    if (state !== undefined && state.inFlight > 0) {
      // A request's body broke off (the client's FIN or a reset mid-body): an answer written
      // here would land in the middle of that request's response. Cut the connection; the
      // exchange reports the break (CLIENT_RESET).
      socket.destroy();
      return;
    }
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    // Answer, then FIN; what the client still sends is read and dropped, so closing does
    // not turn into a reset that could overtake the answer. A client that never closes
    // its side is cut after a grace period.
    socket.resume();
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    setTimeout(() => socket.destroy(), CLIENT_ERROR_GRACE_MS).unref();
    countError(code);
    logger.warn({ code, status, connection: state?.info.id }, 'malformed request');
    if (state !== undefined) emitEvent({ type: 'client-error', connectionId: state.info.id, code, status });
  });

  function connectionInfo(conn: AcceptedConnection): ConnectionInfo {
    return {
      id: conn.id,
      source: { address: conn.source.address, port: conn.source.port },
      destination: conn.originalDestination,
      redirectedBy: conn.records.redirectedBy,
    };
  }

  async function onAccepted(conn: AcceptedConnection): Promise<void> {
    metrics.openConnections.inc();
    metrics.recordsDepth.observe(conn.records.hops);
    const info = connectionInfo(conn);
    const sniffed = await sniff(conn.socket, settings.sniffTimeoutMs);
    if (sniffed.kind === 'closed') {
      conn.socket.destroy();
      return;
    }
    metrics.connections.inc({ kind: sniffed.kind });
    emitEvent({ type: 'connection-kind', connectionId: conn.id, kind: sniffed.kind });
    if (sniffed.kind === 'opaque') return passThrough(conn, info, sniffed.head);
    const state: ConnectionState = { conn, info, agent: new OnwardAgent(conn, settings.connectTimeoutMs, propagateRecords), sequence: 0, inFlight: 0 };
    states.set(conn.socket, state);
    conn.socket.once('close', () => state.agent.destroy());
    conn.socket.unshift(sniffed.head);
    server.emit('connection', conn.socket);
    conn.socket.resume();
  }

  async function passThrough(conn: AcceptedConnection, info: ConnectionInfo, head: Buffer): Promise<void> {
    const startedAt = Date.now();
    let upstream: net.Socket;
    try {
      upstream = await conn.connectOnward({ timeoutMs: settings.connectTimeoutMs, propagateRecords });
    } catch (error) {
      conn.socket.destroy();
      const code = errorCode(error, ProxyErrorCode.OriginUnreachable);
      countError(code);
      emitEvent({ type: 'exchange-failed', connectionId: conn.id, code, message: (error as Error).message });
      record({ kind: 'opaque', connection: info, sequence: 1, error: { code, message: (error as Error).message }, startedAt, durationMs: Date.now() - startedAt });
      return;
    }
    if (head.length > 0) upstream.write(head);
    conn.socket.resume();
    const result = await relay(conn.socket, upstream);
    record({
      kind: 'opaque',
      connection: info,
      sequence: 1,
      // From the relay, not the socket: the socket's bytesRead also counts the redirect layer's framing.
      tunnel: { bytesFromClient: head.length + result.fromClient, bytesToClient: result.toClient },
      ...(result.error !== undefined && { error: { code: errorCode(result.error, 'RESET'), message: result.error.message } }),
      startedAt,
      durationMs: Date.now() - startedAt,
    });
  }

  function requestInfo(req: http.IncomingMessage, state: ConnectionState, upgrade: boolean): RequestInfo {
    const url = req.url ?? '/';
    const query = url.indexOf('?');
    const hostHeader = req.headers.host;
    return {
      method: req.method ?? 'GET',
      url,
      path: query < 0 ? url : url.slice(0, query),
      host: hostHeader === undefined ? undefined : stripPort(hostHeader).toLowerCase(),
      httpVersion: req.httpVersion,
      headers: req.headers,
      connection: state.info,
      upgrade,
    };
  }

  async function onRequest(req: http.IncomingMessage, res: http.ServerResponse, expectContinue: boolean): Promise<void> {
    const state = states.get(req.socket);
    if (state === undefined) return void req.socket.destroy(); // not ours: cannot happen
    const sequence = ++state.sequence;
    state.inFlight++;
    res.once('close', () => state.inFlight--);
    const startedAt = Date.now();
    const request = requestInfo(req, state, false);
    metrics.requests.inc({ method: request.method });
    let requestBytes = 0;
    let responseBytes = 0;
    let response: ResponseInfo | undefined;
    let decision: Decision | undefined;
    let failure: { code: string; message: string } | undefined;
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      // Built only for someone: a subscriber, or a log level that prints it.
      if (!exchanges.observed && !logger.isLevelEnabled(failure === undefined ? 'info' : 'warn')) return;
      record({
        kind: 'http',
        connection: state.info,
        sequence,
        request: { method: request.method, url: request.url, host: request.host, headers: request.headers, bodyBytes: requestBytes },
        ...(response !== undefined && { response: { status: response.status, headers: response.headers, bodyBytes: responseBytes } }),
        ...(decision !== undefined && { decision }),
        ...(failure !== undefined && { error: failure }),
        startedAt,
        durationMs: Date.now() - startedAt,
      });
    };
    const fail = (code: string, error: Error, status: 502 | 504 | undefined): void => {
      // One break may be reported twice (a response's 'aborted' and then its 'error'): count it once.
      if (failure !== undefined) return;
      failure = { code, message: error.message };
      countError(code);
      emitEvent({ type: 'exchange-failed', connectionId: state.info.id, code, message: error.message, ...(status !== undefined && { status }) });
      if (status !== undefined && !res.headersSent) {
        response = { status, headers: {} };
        res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' }).end(`${status} ${http.STATUS_CODES[status]}: ${code}\n`);
      } else {
        // The response had started: the only honest signal left is cutting the connection.
        res.destroy();
      }
    };
    res.once('finish', finish);
    res.once('close', () => {
      if (!res.writableFinished && failure === undefined) {
        failure = { code: ProxyErrorCode.ClientReset, message: 'the client closed the connection before the response was complete' };
        countError(ProxyErrorCode.ClientReset);
        emitEvent({ type: 'exchange-failed', connectionId: state.info.id, code: failure.code, message: failure.message });
      }
      finish();
    });

    try {
      // Without inspectors nothing can say otherwise: allow, without a turn of the event loop.
      decision = inspectors.length === 0 ? ALLOW : await decide(inspectors, request);
    } catch (error) {
      return fail(ProxyErrorCode.InspectorFailed, error instanceof Error ? error : new Error(String(error)), 502);
    }
    metrics.verdicts.inc({ verdict: decision.action });
    if (decision.action === 'block') {
      const status = decision.status >= 400 && decision.status <= 599 ? decision.status : 403;
      const body = `${decision.reason}\n`;
      response = { status, headers: {} };
      responseBytes = Buffer.byteLength(body);
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': responseBytes }).end(body);
      return;
    }

    const upstream = http.request({
      agent: state.agent,
      host: state.info.destination.address,
      port: state.info.destination.port,
      method: request.method,
      path: request.url,
      headers: forwardHeaders(req.rawHeaders, decision.action === 'annotate' ? decision.headers : undefined, false),
      setHost: false,
    });
    upstream.setTimeout(settings.originTimeoutMs, () => {
      const error = new Error(`no ${response === undefined ? 'response' : 'byte'} from the origin within ${settings.originTimeoutMs} ms`);
      if (response === undefined) fail(ProxyErrorCode.OriginTimeout, error, 504);
      else fail(ProxyErrorCode.OriginTimeout, error, undefined);
      upstream.destroy(error);
    });
    if (expectContinue) upstream.on('continue', () => res.writeContinue());
    upstream.on('error', (error: NodeJS.ErrnoException) => {
      if (failure !== undefined || res.writableFinished) return;
      if (response === undefined) {
        const code = originErrorCode(error);
        fail(code, error, code === 'COPROXY_CONNECT_TIMEOUT' ? 504 : 502);
      } else {
        fail(ProxyErrorCode.OriginReset, error, undefined);
      }
    });
    upstream.on('response', (upstreamRes: http.IncomingMessage) => {
      response = { status: upstreamRes.statusCode ?? 502, headers: upstreamRes.headers };
      void inspectResponses(request, response).then(
        () => {
          if (res.destroyed) return void upstreamRes.destroy();
          res.writeHead(response!.status, upstreamRes.statusMessage, forwardHeaders(upstreamRes.rawHeaders, undefined, false));
          upstreamRes.on('data', (chunk: Buffer) => (responseBytes += chunk.length));
          upstreamRes.pipe(res);
          upstreamRes.once('aborted', () => fail(ProxyErrorCode.OriginReset, new Error('the origin closed the connection mid-body'), undefined));
          upstreamRes.once('error', (error) => fail(ProxyErrorCode.OriginReset, error, undefined));
        },
        (error: unknown) => {
          upstreamRes.destroy();
          fail(ProxyErrorCode.InspectorFailed, error instanceof Error ? error : new Error(String(error)), 502);
        },
      );
    });
    // A client that goes away mid-request takes the origin request with it.
    req.once('aborted', () => upstream.destroy());
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    if (req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined) {
      // No body (most GETs): nothing to stream. The request is read to its end anyway,
      // so Node's parser moves on to the next one on this connection.
      req.resume();
      upstream.end();
      return;
    }
    // Counted from here, not earlier: a 'data' listener starts the flow, and bytes that
    // flowed before the pipe would be lost.
    req.on('data', (chunk: Buffer) => (requestBytes += chunk.length));
    req.pipe(upstream);
  }

  async function inspectResponses(request: RequestInfo, response: ResponseInfo): Promise<void> {
    for (const inspector of inspectors) await inspector.inspectResponse?.(request, response);
  }

  async function onUpgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    const state = states.get(socket);
    if (state === undefined) return void socket.destroy();
    const sequence = ++state.sequence;
    const startedAt = Date.now();
    const request = requestInfo(req, state, true);
    metrics.requests.inc({ method: request.method });
    const base = {
      kind: 'upgrade' as const,
      connection: state.info,
      sequence,
      request: { method: request.method, url: request.url, host: request.host, headers: request.headers, bodyBytes: 0 },
      startedAt,
    };
    const refuse = (status: number, code: string, message: string, decision?: Decision): void => {
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(message) + 1}\r\n\r\n${message}\n`);
      record({ ...base, response: { status, bodyBytes: Buffer.byteLength(message) + 1 }, ...(decision !== undefined && { decision }), ...(code !== '' && { error: { code, message } }), durationMs: Date.now() - startedAt });
    };
    // As for requests: counted, reported as an event, and answered while the client listens.
    const fail = (status: 502 | 504, code: string, message: string, decision?: Decision): void => {
      countError(code);
      emitEvent({ type: 'exchange-failed', connectionId: state.info.id, code, message, status });
      if (socket.writable) refuse(status, code, message, decision);
    };
    let decision: Decision;
    try {
      decision = await decide(inspectors, request);
    } catch (error) {
      return fail(502, ProxyErrorCode.InspectorFailed, (error as Error).message);
    }
    metrics.verdicts.inc({ verdict: decision.action });
    if (decision.action === 'block') return refuse(decision.status, '', decision.reason, decision);

    const upstream = http.request({
      agent: state.agent,
      host: state.info.destination.address,
      port: state.info.destination.port,
      method: request.method,
      path: request.url,
      headers: forwardHeaders(req.rawHeaders, decision.action === 'annotate' ? decision.headers : undefined, true),
      setHost: false,
    });
    upstream.setTimeout(settings.originTimeoutMs, () => {
      const error = Object.assign(new Error(`no response from the origin within ${settings.originTimeoutMs} ms`), { code: ProxyErrorCode.OriginTimeout });
      upstream.destroy(error);
    });
    upstream.on('error', (error: NodeJS.ErrnoException) => {
      const code = originErrorCode(error);
      fail(code === 'COPROXY_CONNECT_TIMEOUT' || code === ProxyErrorCode.OriginTimeout ? 504 : 502, code, error.message, decision);
    });
    upstream.on('upgrade', (upstreamRes: http.IncomingMessage, upstreamSocket: net.Socket, upstreamHead: Buffer) => {
      upstream.setTimeout(0);
      upstreamSocket.setTimeout(0);
      socket.setTimeout(0);
      socket.write(responseHead(upstreamRes));
      if (upstreamHead.length > 0) socket.write(upstreamHead);
      if (head.length > 0) upstreamSocket.write(head);
      const fromClientBefore = socket.bytesRead;
      const toClientBefore = socket.bytesWritten;
      void relay(socket, upstreamSocket).then((result) => {
        record({
          ...base,
          response: { status: upstreamRes.statusCode ?? 101, headers: upstreamRes.headers, bodyBytes: 0 },
          decision,
          tunnel: { bytesFromClient: socket.bytesRead - fromClientBefore, bytesToClient: socket.bytesWritten - toClientBefore },
          ...(result.error !== undefined && { error: { code: errorCode(result.error, 'RESET'), message: result.error.message } }),
          durationMs: Date.now() - startedAt,
        });
      });
    });
    upstream.on('response', (upstreamRes: http.IncomingMessage) => {
      // The origin declined the upgrade: pass its answer on and close, as the client expects.
      socket.write(responseHead(upstreamRes, true));
      upstreamRes.pipe(socket);
      upstreamRes.once('end', () => record({ ...base, response: { status: upstreamRes.statusCode ?? 0, headers: upstreamRes.headers, bodyBytes: 0 }, decision, durationMs: Date.now() - startedAt }));
    });
    upstream.end();
  }

  let subscription: Subscription | undefined;
  let closed = false;
  const events$ = new Observable<HttpProxyEvent>((subscriber) => {
    const a = redirector.events$.subscribe(subscriber);
    const b = proxyEvents.subscribe(subscriber);
    return () => {
      a.unsubscribe();
      b.unsubscribe();
    };
  });
  // Connection-level byte counts come from core's 'closed' event: what crossed the client socket.
  const bytesSubscription = redirector.events$.subscribe((event) => {
    if (event.type === 'closed') {
      metrics.openConnections.dec();
      metrics.bytes.inc({ direction: 'from_client' }, event.bytesFromClient);
      metrics.bytes.inc({ direction: 'to_client' }, event.bytesToClient);
    } else if (event.type === 'rejected') {
      countError(event.error.code);
    }
  });
  const installed = new Promise<Endpoint>((resolve, reject) => {
    subscription = redirector.accepted$.subscribe({
      next: (conn) => void onAccepted(conn),
      error: (error: unknown) => {
        logger.error({ err: error }, 'redirector failed');
        reject(error instanceof Error ? error : new Error(String(error)));
        exchanges.error(error);
      },
    });
    redirector.installed().then(resolve, reject);
  });
  // Reported through exchanges$ (an error) and listening() (a rejection); logged here so
  // that a caller who awaits neither does not meet an unhandled rejection.
  installed.catch((error: unknown) => logger.debug({ err: error }, 'install failed'));

  return {
    id: options.id,
    exchanges$: exchanges.asObservable(),
    events$,
    metrics,
    listening: () => installed,
    async close() {
      if (closed) return;
      closed = true;
      subscription?.unsubscribe();
      await redirector.close();
      bytesSubscription.unsubscribe();
      server.close();
      exchanges.complete();
      proxyEvents.complete();
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
}

/** Raw header pairs minus hop-by-hop ones (and those the Connection header names), plus annotations. */
function forwardHeaders(raw: readonly string[], annotations: Readonly<Record<string, string>> | undefined, upgrade: boolean): string[] {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() === 'connection') for (const token of raw[i + 1]!.split(',')) named.add(token.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    const value = raw[i + 1]!;
    if (annotations?.[lower] !== undefined) continue;
    // A chunked body stays chunked (Node frames it again); an upgrade keeps its handshake.
    const keep =
      (lower === 'transfer-encoding' && /chunked/i.test(value)) || (upgrade && (lower === 'connection' || lower === 'upgrade'));
    if (!keep && (HOP_BY_HOP.has(lower) || named.has(lower))) continue;
    out.push(name, value);
  }
  for (const [name, value] of Object.entries(annotations ?? {})) out.push(name, value);
  return out;
}

/**
 * A response head as raw text. `closeDelimited`: the body follows decoded and ends with the
 * connection, so the origin's hop-by-hop headers (its chunked framing among them) are
 * dropped for `Connection: close`.
 */
function responseHead(res: http.IncomingMessage, closeDelimited = false): string {
  let head = `HTTP/1.1 ${res.statusCode ?? 502} ${res.statusMessage ?? ''}\r\n`;
  for (let i = 0; i < res.rawHeaders.length; i += 2) {
    if (closeDelimited && HOP_BY_HOP.has(res.rawHeaders[i]!.toLowerCase())) continue;
    head += `${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}\r\n`;
  }
  if (closeDelimited) head += 'Connection: close\r\n';
  return `${head}\r\n`;
}

function stripPort(host: string): string {
  if (host.startsWith('[')) return host.slice(1, host.indexOf(']') < 0 ? undefined : host.indexOf(']'));
  const colon = host.lastIndexOf(':');
  return colon < 0 ? host : host.slice(0, colon);
}

/** Why the origin gave no response: its parser's errors mean it did not speak HTTP. */
function originErrorCode(error: unknown): string {
  const code = errorCode(error, ProxyErrorCode.OriginUnreachable);
  return code.startsWith('HPE_') ? ProxyErrorCode.OriginMalformed : code;
}

function errorCode(error: unknown, fallback: string): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : fallback;
}

interface Settings {
  readonly originTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly sniffTimeoutMs: number;
  readonly maxHeaderSize: number;
  readonly headersTimeoutMs: number;
  readonly idleTimeoutMs: number;
}

function validate(options: HttpProxyOptions): Settings {
  const positive = (name: keyof HttpProxyOptions & keyof Settings, fallback: number): number => {
    const value = options[name] ?? fallback;
    if (!Number.isInteger(value) || value <= 0) throw new HttpProxyOptionsError(name, `must be a positive integer, got ${String(value)}`);
    return value;
  };
  return {
    originTimeoutMs: positive('originTimeoutMs', 30_000),
    connectTimeoutMs: positive('connectTimeoutMs', 10_000),
    sniffTimeoutMs: positive('sniffTimeoutMs', 1000),
    maxHeaderSize: positive('maxHeaderSize', 16_384),
    headersTimeoutMs: positive('headersTimeoutMs', 60_000),
    idleTimeoutMs: positive('idleTimeoutMs', 120_000),
  };
}
