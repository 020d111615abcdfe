import http from 'node:http';
import http2 from 'node:http2';
import type { IncomingHttpHeaders } from 'node:http';
import { type AcceptedConnection, errorCodeOf } from '@coproxy/core';
import { H2FrameMeter, H2_FRAME_BOUNDS, PerSecondLimit, meteredSocket } from '@coproxy/core/vendor';
import { canonicalAuthority, canonicalRequest } from './canonical-request.js';
import type { ConnectionHooks } from './client-connection.js';
import { ProxyErrorCode } from './errors.js';
import type { HttpExchange } from './events.js';
import { asError, decideRequest, failureText } from './exchange.js';
import { endToEndHeaders, headersObject } from './http-head.js';
import type { ConnectionInfo, Decision, RequestInfo, ResponseInfo } from './inspector.js';

/**
 * HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3), inspected per stream. Node's own
 * HTTP/2 (nghttp2: framing, HPACK, flow control, the protocol's validity checks) serves
 * the client's connection; each request stream is put in the same canonical view as an
 * HTTP/1.1 request (canonical-request.ts), judged by the same rules and inspectors, and
 * either answered on its own stream (a block, a refusal, a failure: its siblings carry
 * on) or forwarded as a stream of one HTTP/2 connection to the original destination,
 * dialled through `connectOnward()` so the flow's redirect records go with it.
 *
 * Bounds against HTTP/2's own attacks (named in the README): Node's session options for
 * what it counts (concurrent streams, header list size and pairs, invalid frames,
 * refused streams, SETTINGS entries) and a per-second count here for what it does not
 * (streams the client resets, PINGs, SETTINGS frames) and a count of WINDOW_UPDATE frames
 * against the DATA the proxy sent (core's `H2FrameMeter`): over either, GOAWAY
 * ENHANCE_YOUR_CALM and the connection is closed.
 */

/** The HTTP/2 bounds of a client connection. */
export const H2C_LIMITS = {
  /** SETTINGS_MAX_CONCURRENT_STREAMS offered: a stream past it is refused (REFUSED_STREAM). */
  maxConcurrentStreams: 100,
  /** Header fields in one request (Node's `maxHeaderListPairs`): beyond, the stream is reset. */
  maxHeaderListPairs: 128,
  /** Invalid frames a session may send before it is closed (Node's `maxSessionInvalidFrames`). */
  maxSessionInvalidFrames: 100,
  /** Streams refused (over the concurrency bound, …) before the session is closed (Node's `maxSessionRejectedStreams`). */
  maxSessionRejectedStreams: 100,
  /** Entries in one SETTINGS frame (Node's `maxSettings`). */
  maxSettings: 32,
  /** Streams a client may reset within one second (rapid reset, CVE-2023-44487). */
  maxResetsPerSecond: 100,
  /** PING and SETTINGS frames a client may send within one second (control-frame floods). */
  maxControlFramesPerSecond: 100,
  /**
   * WINDOW_UPDATE frames (which Node neither reports nor bounds): at most this base, plus
   * `windowUpdatesPerStream` per stream and `windowUpdatesPerDataFrame` per DATA frame sent
   * (core's `H2FrameMeter`, counting frame headers on the connection's bytes).
   */
  ...H2_FRAME_BOUNDS,
} as const;

/** A stream's refusal before inspection: answered on the stream, its siblings carry on. */
interface StreamRefusal {
  readonly code: string;
  readonly status: number;
  readonly message: string;
}

/** One exchange on one stream, for the exchange log. */
interface StreamExchange {
  readonly startedAt: number;
  readonly stream: number;
  request: RequestInfo | undefined;
  readonly method: string;
  readonly url: string;
  decision: Decision | undefined;
  response: ResponseInfo | undefined;
  requestBytes: number;
  responseBytes: number;
  failure: { code: string; message: string } | undefined;
  finished: boolean;
  /** The client's HEADERS ended the request (no body). */
  readonly endStream: boolean;
  /** The proxy reset the client's stream itself (not the client's reset). */
  resetByProxy: boolean;
}

/**
 * Serves one client connection whose first bytes (`head`, already read) are the HTTP/2
 * preface. Returns once the session is set up; it ends on its own.
 */
export function serveH2c(conn: AcceptedConnection, info: ConnectionInfo, head: Buffer, hooks: ConnectionHooks): void {
  new H2cConnection(conn, info, hooks).start(head);
}

class H2cConnection {
  private session: http2.ServerHttp2Session | undefined;
  /** The connection to the origin, dialled at the first forwarded stream; undefined again once it closed. */
  private origin: Promise<http2.ClientHttp2Session> | undefined;
  /** Per-second counts of what Node does not bound itself. */
  private readonly resets = new PerSecondLimit(H2C_LIMITS.maxResetsPerSecond, () =>
    this.cutOff(`more than ${H2C_LIMITS.maxResetsPerSecond} streams reset by the client within a second`),
  );
  private readonly control = new PerSecondLimit(H2C_LIMITS.maxControlFramesPerSecond, () =>
    this.cutOff(`more than ${H2C_LIMITS.maxControlFramesPerSecond} PING and SETTINGS frames within a second`),
  );
  private closed = false;
  /** The client's open streams, cut when the connection is closed for a flood. */
  private readonly streams = new Set<http2.ServerHttp2Stream>();

  constructor(
    private readonly conn: AcceptedConnection,
    private readonly info: ConnectionInfo,
    private readonly hooks: ConnectionHooks,
  ) {}

  start(head: Buffer): void {
    const socket = this.conn.socket;
    // Frames reach the socket through a JS stream, a header and its payload as separate
    // writes: without this, Nagle's algorithm holds the second for the peer's delayed ACK.
    socket.setNoDelay(true);
    const meter = new H2FrameMeter(H2C_LIMITS, (message) => this.cutOff(message));
    const session = http2.performServerHandshake(meteredSocket(socket, head, meter, SOCKET_LINGER_MS), {
      settings: {
        maxConcurrentStreams: H2C_LIMITS.maxConcurrentStreams,
        maxHeaderListSize: this.hooks.settings.maxHeaderSize,
        enablePush: false,
      },
      maxHeaderListPairs: H2C_LIMITS.maxHeaderListPairs,
      maxSessionInvalidFrames: H2C_LIMITS.maxSessionInvalidFrames,
      maxSessionRejectedStreams: H2C_LIMITS.maxSessionRejectedStreams,
      maxSettings: H2C_LIMITS.maxSettings,
    });
    this.session = session;
    session.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, flags: number, rawHeaders: readonly string[]) => this.onStream(stream, headers, (flags & http2.constants.NGHTTP2_FLAG_END_STREAM) !== 0, [...rawHeaders]));
    session.on('ping', () => this.control.add());
    session.on('remoteSettings', () => this.control.add());
    session.on('error', (error: NodeJS.ErrnoException) => {
      const code = error.code ?? 'ERR_HTTP2_ERROR';
      this.hooks.countError(code);
      this.hooks.logger.debug({ err: error, connection: this.info.id }, 'h2c session error');
      this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code });
    });
    session.on('frameError', (type: number, code: number, id: number) => this.hooks.logger.debug({ connection: this.info.id, type, code, stream: id }, 'h2c frame error'));
    session.setTimeout(this.hooks.settings.idleTimeoutMs, () => session.close());
    session.once('close', () => this.onClose());
  }

  /** Over a per-second bound: the client is told to calm down and cut off. */
  private cutOff(message: string): void {
    if (this.closed) return;
    this.closed = true;
    this.hooks.countError(ProxyErrorCode.H2Flood);
    this.hooks.logger.warn({ connection: this.info.id, code: ProxyErrorCode.H2Flood, reason: message }, 'h2c client cut off');
    this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code: ProxyErrorCode.H2Flood });
    // The GOAWAY carries the reason, then the connection closes: a well-meaning client learns why.
    const session = this.session!;
    session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    // Streams still open are cut: what the client reads after the GOAWAY is the close.
    session.close();
    setTimeout(() => session.destroy(), SOCKET_LINGER_MS).unref();
    for (const stream of this.streams) stream.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
  }

  private onClose(): void {
    this.closed = true;
    const origin = this.origin;
    this.origin = undefined;
    origin?.then((session) => session.close()).catch(() => undefined);
    const socket = this.conn.socket;
    if (socket.destroyed) return;
    // The session's last frames (a GOAWAY) are written before the FIN; a client that does not read is cut after a bounded wait.
    socket.end();
    setTimeout(() => socket.destroy(), SOCKET_LINGER_MS).unref();
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, endStream: boolean, rawHeaders: string[]): void {
    const method = headers[':method'] ?? '';
    const exchange: StreamExchange = {
      startedAt: Date.now(),
      stream: stream.id ?? 0,
      request: undefined,
      method,
      url: headers[':path'] ?? '',
      decision: undefined,
      response: undefined,
      requestBytes: 0,
      responseBytes: 0,
      failure: undefined,
      finished: false,
      endStream,
      resetByProxy: false,
    };
    this.hooks.metrics.requests.inc({ method: METHOD_LABELS.has(method) ? method : 'other' });
    this.streams.add(stream);
    stream.on('error', (error) => this.hooks.logger.debug({ err: error, connection: this.info.id, stream: stream.id }, 'h2c stream error'));
    stream.once('close', () => {
      this.streams.delete(stream);
      // A stream the client reset before its answer was complete: rapid reset counts these.
      // (Node reports such a stream `aborted`, or it closes before the proxy's answer began.)
      if (stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR && !exchange.resetByProxy && (stream.aborted || !stream.headersSent)) {
        this.resets.add();
        if (exchange.failure === undefined && !exchange.finished) {
          exchange.failure = { code: ProxyErrorCode.ClientReset, message: `the client reset the stream (${stream.rstCode})` };
        }
      }
      this.finish(exchange);
    });
    const view = requestView(method, headers, rawHeaders, this.info);
    if ('code' in view) {
      this.refuse(stream, exchange, view);
      return;
    }
    exchange.request = view;
    this.judge(stream, exchange, view).catch((error: unknown) => this.internal(stream, exchange, error));
  }

  private async judge(stream: http2.ServerHttp2Stream, exchange: StreamExchange, request: RequestInfo): Promise<void> {
    let decision: Decision;
    try {
      decision = await decideRequest(this.hooks.inspectors, request);
    } catch (error) {
      this.fail(stream, exchange, ProxyErrorCode.InspectorFailed, asError(error), 502);
      return;
    }
    exchange.decision = decision;
    this.hooks.metrics.verdicts.inc({ verdict: decision.action });
    if (stream.destroyed) return;
    switch (decision.action) {
      case 'block':
        drain(stream, exchange); // the body is not wanted
        this.answer(stream, exchange, decision.status >= 400 && decision.status <= 599 ? decision.status : 403, `${decision.reason}\n`);
        return;
      case 'allow':
      case 'annotate':
        break;
      default:
        return unreachable(decision);
    }
    let outgoing: http2.OutgoingHttpHeaders;
    try {
      outgoing = originHeaders(request, decision.action === 'annotate' ? decision.headers : undefined);
    } catch (error) {
      this.fail(stream, exchange, ProxyErrorCode.InspectorFailed, asError(error), 502);
      return;
    }
    await this.forward(stream, exchange, request, outgoing);
  }

  private async forward(stream: http2.ServerHttp2Stream, exchange: StreamExchange, request: RequestInfo, outgoing: http2.OutgoingHttpHeaders): Promise<void> {
    let origin: http2.ClientHttp2Session;
    try {
      origin = await this.originSession();
    } catch (error) {
      const code = errorCodeOf(error, ProxyErrorCode.OriginUnreachable);
      this.fail(stream, exchange, code, asError(error), code === 'COPROXY_CONNECT_TIMEOUT' ? 504 : 502);
      return;
    }
    if (stream.destroyed) return;
    let upstream: http2.ClientHttp2Stream;
    try {
      upstream = origin.request(outgoing, { endStream: exchange.endStream, waitForTrailers: !exchange.endStream });
    } catch (error) {
      this.fail(stream, exchange, errorCodeOf(error, ProxyErrorCode.OriginUnreachable), asError(error), 502);
      return;
    }
    // Either side's reset ends the other: nothing is left half-open.
    stream.once('close', () => {
      if (!upstream.closed) upstream.close(http2.constants.NGHTTP2_CANCEL);
    });
    upstream.setTimeout(this.hooks.settings.originTimeoutMs, () => {
      const error = Object.assign(new Error(`no answer from the origin within ${this.hooks.settings.originTimeoutMs} ms`), { code: ProxyErrorCode.OriginTimeout });
      this.fail(stream, exchange, ProxyErrorCode.OriginTimeout, error, 504);
      upstream.close(http2.constants.NGHTTP2_CANCEL);
    });
    upstream.on('error', (error: NodeJS.ErrnoException) => {
      const code = exchange.response === undefined ? errorCodeOf(error, ProxyErrorCode.OriginUnreachable) : ProxyErrorCode.OriginReset;
      this.fail(stream, exchange, code, error, 502);
    });
    upstream.once('close', () => {
      // A reset from the origin without an error event (it refused the stream, …).
      if (upstream.rstCode !== undefined && upstream.rstCode !== http2.constants.NGHTTP2_NO_ERROR && exchange.failure === undefined && !stream.writableFinished) {
        const error = Object.assign(new Error(`the origin reset the stream (${upstream.rstCode})`), { code: ProxyErrorCode.OriginReset });
        this.fail(stream, exchange, exchange.response === undefined ? ProxyErrorCode.OriginUnreachable : ProxyErrorCode.OriginReset, error, 502);
      }
    });
    upstream.on('response', (headers) => {
      this.onResponse(stream, upstream, exchange, request, headers).catch((error: unknown) => this.internal(stream, exchange, error));
    });
    // The body streams with HTTP/2's flow control on both legs: the client's window opens as the origin's does.
    if (exchange.endStream) drain(stream, exchange);
    else {
      // Request trailers are not forwarded: they arrive after the verdict, when the body has
      // gone on, so no rule or inspector could judge them (I6), as on HTTP/1.1. The origin's
      // stream ends with an empty end.
      upstream.once('wantTrailers', () => upstream.sendTrailers({}));
      stream.on('data', (chunk: Buffer) => (exchange.requestBytes += chunk.length));
      stream.pipe(upstream);
    }
  }

  private async onResponse(
    stream: http2.ServerHttp2Stream,
    upstream: http2.ClientHttp2Stream,
    exchange: StreamExchange,
    request: RequestInfo,
    headers: http2.IncomingHttpHeaders & http2.IncomingHttpStatusHeader,
  ): Promise<void> {
    const status = headers[':status'] ?? 502;
    const plain: IncomingHttpHeaders = {};
    for (const [name, value] of Object.entries(headers)) if (!name.startsWith(':')) plain[name] = value;
    exchange.response = { status, headers: plain };
    if (this.hooks.inspectsResponses) {
      upstream.pause();
      try {
        for (const inspector of this.hooks.inspectors) await inspector.inspectResponse?.(request, exchange.response);
      } catch (error) {
        exchange.response = undefined;
        upstream.close(http2.constants.NGHTTP2_CANCEL);
        this.fail(stream, exchange, ProxyErrorCode.InspectorFailed, asError(error), 502);
        return;
      }
    }
    if (stream.destroyed) return;
    const noBody = request.method === 'HEAD' || status === 204 || status === 304;
    // Trailers (gRPC's grpc-status) are passed on: the answer ends with the origin's, or an empty end without any.
    let trailers: http2.OutgoingHttpHeaders = {};
    upstream.once('trailers', (received: http2.IncomingHttpHeaders) => (trailers = withoutPseudoHeaders(received)));
    stream.once('wantTrailers', () => stream.sendTrailers(trailers));
    stream.respond({ ...plain, ':status': status }, { endStream: false, waitForTrailers: true });
    upstream.on('data', (chunk: Buffer) => (exchange.responseBytes += chunk.length));
    if (noBody) {
      upstream.resume();
      upstream.once('end', () => stream.end());
    } else {
      upstream.pipe(stream);
    }
  }

  /** The origin's connection: one HTTP/2 connection per client connection, its streams the client's. */
  private originSession(): Promise<http2.ClientHttp2Session> {
    this.origin ??= (async () => {
      const socket = await this.conn.connectOnward({ timeoutMs: this.hooks.settings.connectTimeoutMs, propagateRecords: this.hooks.propagateRecords });
      // The next redirector's flow header (embedded backend) may still sit in the socket's stream
      // buffer; Node's HTTP/2 writes to the handle beneath it, so it goes out first.
      if (socket.writableLength > 0) await new Promise<void>((resolve) => socket.write('', () => resolve()));
      const destination = this.info.destination;
      const session = http2.connect(`http://${destination.address.includes(':') ? `[${destination.address}]` : destination.address}:${destination.port}`, {
        createConnection: () => socket,
        settings: { enablePush: false },
        maxHeaderListPairs: H2C_LIMITS.maxHeaderListPairs,
        maxSettings: H2C_LIMITS.maxSettings,
      });
      session.on('error', (error) => this.hooks.logger.debug({ err: error, connection: this.info.id }, 'h2c origin session error'));
      session.once('close', () => {
        if (this.origin === pending) this.origin = undefined;
      });
      // A GOAWAY (an origin draining before a restart) takes no new streams: the next one dials
      // a new connection. This one finishes its open streams (Node closes it after them), or is
      // cut with them when the client goes.
      session.once('goaway', () => {
        if (this.origin === pending) this.origin = undefined;
      });
      if (this.closed) session.close();
      return session;
    })();
    const pending = this.origin;
    pending.catch(() => {
      if (this.origin === pending) this.origin = undefined;
    });
    return pending;
  }

  /** A fault in the proxy's own code while serving a stream: that stream fails (502), never the connection. */
  private internal(stream: http2.ServerHttp2Stream, exchange: StreamExchange, error: unknown): void {
    this.hooks.logger.error({ err: error, connection: this.info.id, stream: stream.id }, 'internal error while serving an h2c stream');
    try {
      this.fail(stream, exchange, ProxyErrorCode.Internal, asError(error), 502);
    } catch (again) {
      this.hooks.logger.error({ err: again, connection: this.info.id }, 'could not answer the failed stream');
      if (!stream.destroyed) stream.destroy();
    }
  }

  /** A request the proxy refuses to forward, answered on its own stream. */
  private refuse(stream: http2.ServerHttp2Stream, exchange: StreamExchange, refusal: StreamRefusal): void {
    exchange.failure = { code: refusal.code, message: refusal.message };
    this.hooks.countError(refusal.code);
    this.hooks.logger.warn({ code: refusal.code, status: refusal.status, connection: this.info.id, stream: stream.id, reason: refusal.message }, 'request refused');
    this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code: refusal.code, status: refusal.status });
    drain(stream, exchange);
    this.answer(stream, exchange, refusal.status, `${failureText(refusal.status, refusal.code, refusal.message)}\n`);
  }

  private fail(stream: http2.ServerHttp2Stream, exchange: StreamExchange, code: string, error: Error, status: number): void {
    if (exchange.failure !== undefined) return;
    exchange.failure = { code, message: error.message };
    this.hooks.countError(code);
    this.hooks.logger.warn({ code, status, connection: this.info.id, stream: stream.id, reason: error.message }, 'exchange failed');
    this.hooks.emitEvent({ type: 'exchange-failed', connectionId: this.info.id, code, message: error.message, status });
    if (stream.destroyed) return;
    if (stream.headersSent) {
      // The answer began: only a cut can say it is incomplete.
      exchange.resetByProxy = true;
      stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      return;
    }
    drain(stream, exchange);
    this.answer(stream, exchange, status, `${failureText(status, code, error.message)}\n`);
  }

  /** The proxy's own answer on one stream. */
  private answer(stream: http2.ServerHttp2Stream, exchange: StreamExchange, status: number, text: string): void {
    if (stream.destroyed || stream.headersSent) return;
    exchange.response ??= { status, headers: { 'content-type': 'text/plain; charset=utf-8' } };
    const body = Buffer.from(text);
    exchange.responseBytes = body.length;
    stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8', 'content-length': body.length });
    stream.end(body);
  }

  private finish(exchange: StreamExchange): void {
    if (exchange.finished) return;
    exchange.finished = true;
    if (!this.hooks.wantsExchanges(exchange.failure !== undefined)) return;
    const request = exchange.request;
    const entry: HttpExchange = {
      kind: 'http',
      protocol: 'h2c',
      stream: exchange.stream,
      connection: this.info,
      sequence: exchange.stream,
      request: { method: exchange.method, url: exchange.url, host: request?.host, headers: request?.headers ?? {}, bodyBytes: exchange.requestBytes },
      ...(exchange.response !== undefined && { response: { status: exchange.response.status, headers: exchange.response.headers, bodyBytes: exchange.responseBytes } }),
      ...(exchange.decision !== undefined && { decision: exchange.decision }),
      ...(exchange.failure !== undefined && { error: exchange.failure }),
      startedAt: exchange.startedAt,
      durationMs: Date.now() - exchange.startedAt,
    };
    this.hooks.onExchange(entry);
  }
}

/**
 * The methods counted under their own name: the list HTTP/1.1's parser accepts. HTTP/2's
 * `:method` is any token, and each label value is a series kept for the process's life.
 */
const METHOD_LABELS: ReadonlySet<string> = new Set(http.METHODS);

/** How long a closing connection's last writes (a GOAWAY) may take to reach a client before it is cut. */
const SOCKET_LINGER_MS = 1000;

/** Reads and drops what is left of a request body, counting it (a listener of its own: 'data' starts the flow). */
function drain(stream: http2.ServerHttp2Stream, exchange: StreamExchange): void {
  if (stream.listenerCount('data') === 0) stream.on('data', (chunk: Buffer) => (exchange.requestBytes += chunk.length));
}


/**
 * A request stream in the one view the rules judge and the origin is sent, as for
 * HTTP/1.1 (canonical-request.ts). HTTP/2's pseudo-headers map onto it: `:authority` is
 * the Host (one that disagrees with a `Host` field is refused: RFC 9113 §8.3.1 tells a
 * server to treat it as malformed, and two parsers could route on either), `:path` the
 * origin-form target (`*` only for OPTIONS), `:scheme` must be `http` (this is the
 * cleartext port). What nghttp2 already refuses (upper-case names, connection-specific
 * fields, a missing pseudo-header) never gets here.
 */
function requestView(method: string, headers: http2.IncomingHttpHeaders, rawHeaders: string[], connection: ConnectionInfo): RequestInfo | StreamRefusal {
  const target = (message: string): StreamRefusal => ({ code: ProxyErrorCode.TargetInvalid, status: 400, message });
  if (method === 'CONNECT') return { code: ProxyErrorCode.ConnectMethod, status: 501, message: 'CONNECT is for explicit proxies' };
  const scheme = headers[':scheme'];
  if (scheme !== 'http') return target(`:scheme ${JSON.stringify(scheme)} on a cleartext port`);
  const path = headers[':path'] ?? '';
  if (!path.startsWith('/') && !(path === '*' && method === 'OPTIONS')) return target(`:path ${JSON.stringify(path)} is not origin-form`);
  const authority = headers[':authority'];
  const raw: string[] = [];
  let host: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.startsWith(':')) continue;
    if (name === 'host') {
      if (host !== undefined) return { code: ProxyErrorCode.HostDuplicate, status: 400, message: 'more than one host field' };
      host = rawHeaders[i + 1]!;
      continue;
    }
    raw.push(name, rawHeaders[i + 1]!);
  }
  if (authority !== undefined && host !== undefined && (canonicalAuthority(authority)?.authority ?? authority) !== (canonicalAuthority(host)?.authority ?? host)) {
    return { code: ProxyErrorCode.AuthorityMismatch, status: 400, message: `:authority ${JSON.stringify(authority)} and host ${JSON.stringify(host)} differ` };
  }
  const hostValue = authority ?? host;
  if (hostValue !== undefined) raw.unshift('host', hostValue);
  const view = canonicalRequest({ method, url: path, versionMajor: 2, versionMinor: 0, rawHeaders: raw }, headersObject(raw));
  if (view.rejection !== undefined) return { code: view.rejection.code, status: view.rejection.status, message: view.rejection.message };
  return {
    method,
    url: path,
    target: view.target,
    path: view.path,
    paths: view.paths,
    host: view.host,
    port: view.port,
    authority: view.authority,
    httpVersion: '2.0',
    headers: view.headers,
    connection,
    upgrade: false,
  };
}

/**
 * What the origin is sent: the headers the inspectors saw (`request.headers`, so a
 * repeated single-valued field goes as the one they judged), the canonical authority as
 * `:authority` rather than `host` (RFC 9113 §8.3.1), and the annotations, which may not
 * set a framing, routing or connection-specific field.
 */
function originHeaders(request: RequestInfo, annotations: Readonly<Record<string, string>> | undefined): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (name === 'host' || value === undefined) continue;
    out[name] = value;
  }
  if (annotations !== undefined) {
    // Throws for an invalid name or value and for a framing or hop-by-hop field, as for HTTP/1.1.
    endToEndHeaders([], annotations);
    for (const [name, value] of Object.entries(annotations)) out[name.toLowerCase()] = value;
  }
  out[':method'] = request.method;
  out[':path'] = request.target;
  out[':scheme'] = 'http';
  out[':authority'] = request.authority;
  return out;
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}

/** Trailer fields as node:http2 may send them on: pseudo-headers are not fields. */
function withoutPseudoHeaders(received: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(received)) if (!name.startsWith(':') && value !== undefined) out[name] = value;
  return out;
}
