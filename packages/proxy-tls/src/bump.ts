import http from 'node:http';
import http2 from 'node:http2';
import type { Duplex, Readable, Writable } from 'node:stream';
import tls from 'node:tls';
import { type AcceptedConnection, errorCodeOf } from '@coproxy/core';
import { type ConnectionInfo, type Decision, H2FrameMeter, type Inspector, PerSecondLimit, type RequestInfo, canonicalAuthority, decide, meteredSocket, pathReadings } from '@coproxy/core/vendor';
import type { CertificateAuthority } from './ca.js';
import { TlsErrorCode } from './errors.js';
import type { BumpProtocol, TlsExchange } from './events.js';
import { H2_LIMITS, H2_SERVER_OPTIONS } from './h2-limits.js';
import type { Reporter } from './reporter.js';
import type { OnwardSettings } from './splice.js';
import { ALERT, tlsAlertRecord } from './tls-alert.js';

/**
 * What bump speaks, in its order of preference, to both sides: a client that offers `h2`
 * gets it, whatever the origin chose; each leg speaks what its own ALPN chose and bump
 * converts between them. A client that offers ALPN but none of these is unbumpable.
 */
export const BUMP_PROTOCOLS: readonly BumpProtocol[] = ['h2', 'http/1.1'];

export interface BumpOptions {
  /** The CA that mints the leaves; undefined when no policy rule bumps (then a bump fails). */
  readonly ca: Promise<CertificateAuthority> | undefined;
  /** PEM bundle to verify origins with, instead of Node's system store. */
  readonly originCa: string | Buffer | undefined;
  readonly onward: OnwardSettings;
  readonly reporter: Reporter;
  /** Run on every decrypted request, h1 or h2 stream alike, in order (core's `decide`). */
  readonly inspectors: readonly Inspector[];
  /** A bumped connection quiet this long is closed (handshake, between h1 requests, an idle h2 session). */
  readonly idleTimeoutMs: number;
}

/** The bump leg of the proxy: one HTTP/1.1 server for every bumped h1 connection, one node:http2 session per h2 one. */
export interface Bumper {
  /** Terminates the client's TLS (its ClientHello already read: `hello`) and proxies its requests to the origin. */
  bump(conn: AcceptedConnection, hello: Buffer, sni: string | undefined): Promise<void>;
  close(): void;
}

/** What every exchange of one bumped connection shares. */
interface BumpedConnection {
  readonly conn: AcceptedConnection;
  readonly sni: string | undefined;
  readonly info: ConnectionInfo;
  readonly origin: OriginLeg;
  /** The origin's certificate, verified for the SNI (or the address): the names a request on this connection may be for. */
  readonly originCertificate: tls.PeerCertificate;
  sequence: number;
}

/** A request as bump forwards it, whichever protocol it came in: headers lower-case, without pseudo-headers or hop-by-hop ones. */
interface ForwardedHead {
  readonly method: string;
  readonly path: string;
  readonly authority: string;
  readonly headers: http.OutgoingHttpHeaders;
  /** Whether a body follows the head (an h1 Content-Length or Transfer-Encoding, an h2 HEADERS without END_STREAM). */
  readonly hasBody: boolean;
}

interface OriginResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Readable;
  /** The response's trailers, once `body` has ended; undefined without any. */
  trailers(): http.IncomingHttpHeaders | undefined;
}

/** The origin side of one bumped connection, h1 or h2 as the origin's ALPN chose. */
interface OriginLeg {
  readonly protocol: BumpProtocol;
  /**
   * Sends the head, pipes `body` after it; resolves with the response head. `signal`
   * cancels the request. Request trailers are never sent: they arrive after the verdict,
   * when the body has gone on, so no inspector could judge them (I6); coproxy-http drops
   * them too.
   */
  send(head: ForwardedHead, body: Readable, signal: AbortSignal): Promise<OriginResponse>;
  destroy(): void;
}

/** The client side of one exchange: an h1 request/response pair or an h2 stream, behind one face. */
interface ClientSide {
  readonly protocol: BumpProtocol;
  readonly method: string;
  /** The request target as sent (`:path`, or the h1 request line's). */
  readonly path: string;
  readonly authority: string | undefined;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Readable;
  /** Whether the request has a body to forward, however it was framed on the client's leg. */
  readonly hasBody: boolean;
  /** Starts the response; undefined when the client is gone. */
  respond(status: number, headers: http.OutgoingHttpHeaders): Writable | undefined;
  /** The response's trailers, given once its body is complete and before the writable is ended. */
  setTrailers(trailers: http.OutgoingHttpHeaders | undefined): void;
  /** A complete short answer of ours (a block, a 502) on this exchange only. */
  answer(status: number, text: string): void;
  /** Ends the exchange abruptly (an h2 RST_STREAM, an h1 connection close). */
  abort(): void;
  /** Called once if the client leaves before the response is complete. */
  onGone(callback: () => void): void;
}

/**
 * TLS termination with a leaf minted from the local CA, and a second HTTP proxy inside:
 * each decrypted exchange (an HTTP/1.1 request or an HTTP/2 stream) goes through the
 * inspectors, is reported (`exchanges$`) and re-encrypted to the origin, whose certificate
 * is verified before the client sees any leaf of ours.
 */
export function createBumper({ ca, originCa, onward, reporter, inspectors, idleTimeoutMs }: BumpOptions): Bumper {
  const { metrics } = reporter;
  // Built once, also for the system store: `tls.connect` without a context makes a new one,
  // and parsing the origin bundle per bumped connection was ~5% of a bump's CPU.
  const originContext = tls.createSecureContext(originCa === undefined ? {} : { ca: originCa });
  // Asked once, not per response: most inspectors look at requests only.
  const responseInspectors = inspectors.filter((inspector) => inspector.inspectResponse !== undefined);
  const bumpedH1 = new WeakMap<object, BumpedConnection>();

  /** The origin first: if its certificate does not verify, the client gets an alert and never our leaf. */
  function connectOrigin(conn: AcceptedConnection, sni: string | undefined): Promise<tls.TLSSocket> {
    return conn.connectOnward({ timeoutMs: onward.connectTimeoutMs, propagateRecords: onward.propagateRecords }).then(
      (socket) =>
        new Promise<tls.TLSSocket>((resolve, reject) => {
          const secure = tls.connect({
            socket,
            ...(sni !== undefined && { servername: sni }),
            // Without SNI the certificate is checked against the destination address.
            host: sni ?? conn.originalDestination.address,
            ALPNProtocols: [...BUMP_PROTOCOLS],
            secureContext: originContext,
            rejectUnauthorized: true,
          });
          secure.once('secureConnect', () => {
            secure.off('error', reject);
            resolve(secure);
          });
          secure.once('error', (error: Error) => {
            socket.destroy();
            reject(error);
          });
        }),
    );
  }

  async function bump(conn: AcceptedConnection, hello: Buffer, sni: string | undefined): Promise<void> {
    let origin: tls.TLSSocket;
    let context: tls.SecureContext;
    let originReady: Promise<tls.TLSSocket> | undefined;
    try {
      const authority = await (ca ?? Promise.reject(new Error('no CA configured')));
      originReady = connectOrigin(conn, sni);
      [origin, context] = await Promise.all([originReady, authority.contextFor(sni ?? conn.originalDestination.address)]);
    } catch (error) {
      // When minting failed, the origin may still connect: it must not stay open. (Its own
      // failure, if it failed too, is not reported twice: the first error is the event.)
      originReady?.then(
        (socket) => socket.destroy(),
        () => undefined,
      );
      const code = errorCodeOf(error, TlsErrorCode.OriginFailed);
      reporter.fail('origin-rejected', conn.id, code, (error as Error).message);
      conn.socket.end(tlsAlertRecord(isCertificateError(code) ? ALERT.badCertificate : ALERT.handshakeFailure));
      conn.socket.destroySoon();
      return;
    }
    // The ClientHello already read is replayed into the TLS server socket.
    conn.socket.unshift(hello);
    const client = new tls.TLSSocket(conn.socket, { isServer: true, secureContext: context, ALPNProtocols: [...BUMP_PROTOCOLS] });
    // A client quiet in its handshake must not hold this socket and the origin's for ever;
    // after it, the h1 server's timeout or the h2 session's takes over.
    client.setTimeout(idleTimeoutMs, () => client.destroy());
    const reconnect = (): Promise<tls.TLSSocket> => connectOrigin(conn, sni);
    const defaultAuthority = sni ?? hostForUrl(conn.originalDestination.address);
    const originLeg: OriginLeg = origin.alpnProtocol === 'h2' ? new H2OriginLeg(origin, reconnect, defaultAuthority) : new H1OriginLeg(origin, reconnect);
    const state: BumpedConnection = {
      conn,
      sni,
      origin: originLeg,
      originCertificate: origin.getPeerCertificate(),
      sequence: 0,
      info: {
        id: conn.id,
        source: { address: conn.source.address, port: conn.source.port },
        destination: conn.originalDestination,
        redirectedBy: conn.records.redirectedBy,
      },
    };
    client.on('error', (error: Error) => {
      reporter.fail('connection-failed', conn.id, errorCodeOf(error, TlsErrorCode.ClientTlsFailed), error.message);
      originLeg.destroy();
    });
    client.once('close', () => {
      originLeg.destroy();
      conn.socket.destroy();
    });
    // Until 'secure' nothing reads the TLS socket: a client that hangs up mid-handshake (it
    // did not trust our leaf) is noticed here, not by the HTTP side it never reached.
    let served = false;
    client.once('end', () => {
      if (!served) client.destroy();
    });
    // Not resumed here: the TLS socket reads the replayed bytes out of the raw socket's
    // buffer on its next tick, and a flowing raw socket would hand them to nobody first.
    client.once('secure', () => {
      served = true;
      if (client.alpnProtocol === 'h2') return serveH2(client, state);
      bumpedH1.set(client, state);
      h1Server.emit('connection', client);
    });
  }

  /** One HTTP/2 session on the bumped TLS socket, under `H2_LIMITS`; each stream is an exchange. */
  function serveH2(client: tls.TLSSocket, state: BumpedConnection): void {
    // Node internal relied on: a server TLSSocket made without a tls.Server keeps
    // `secureConnecting` true after its handshake (tls.Server's own listener clears it), and
    // node:http2 then waits for a 'secureConnect' that never comes. The handshake is done.
    (client as tls.TLSSocket & { secureConnecting: boolean }).secureConnecting = false;
    // The redirector's sockets allow half-open TCP (a splice relays a FIN as a FIN); HTTP/2
    // gives a half-close no meaning, and node:http2 never ends a session on a FIN: without
    // this a client that hangs up without GOAWAY (curl does) leaves the connection open.
    client.allowHalfOpen = false;
    client.setTimeout(0);
    // The session's frames reach the TLS socket through a JS stream (below), a frame header
    // and its payload as separate writes: Nagle's algorithm would hold each second small
    // record for the peer's delayed ACK (an 8 MiB download took ten times as long).
    state.conn.socket.setNoDelay(true);
    const { id } = state.conn;
    // WINDOW_UPDATEs, which node:http2 neither reports nor bounds, are counted on the bytes
    // going into the session (a JS duplex between the TLS socket and the session: core's
    // meteredSocket). `calm` is hoisted: the meter calls it on a later tick.
    const meter = new H2FrameMeter(H2_LIMITS, (message) => calm(TlsErrorCode.H2ControlFlood, message));
    const session = http2.performServerHandshake(meteredSocket(client, undefined, meter, IDLE_LINGER_MS), H2_SERVER_OPTIONS);
    // No frame either way for idleTimeoutMs: the session ends (GOAWAY), and is cut if a stream
    // the client keeps open (a body never ended) holds it.
    session.setTimeout(idleTimeoutMs, () => {
      session.close();
      setTimeout(() => session.destroy(), IDLE_LINGER_MS).unref();
    });
    function calm(code: TlsErrorCode, message: string): void {
      reporter.fail('connection-failed', id, code, message);
      // The GOAWAY says why; destroy() then ends the session without waiting for its streams.
      session.goaway(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      session.destroy(undefined, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    }
    const resets = new PerSecondLimit(H2_LIMITS.maxResetsPerSecond, () => calm(TlsErrorCode.H2RapidReset, `the client reset more than ${H2_LIMITS.maxResetsPerSecond} streams in a second`));
    const control = new PerSecondLimit(H2_LIMITS.maxControlFramesPerSecond, () =>
      calm(TlsErrorCode.H2ControlFlood, `the client sent more than ${H2_LIMITS.maxControlFramesPerSecond} PING and SETTINGS frames in a second`),
    );
    session.on('ping', () => control.add());
    session.on('remoteSettings', () => control.add());
    session.on('stream', (stream, headers) => serveExchange(state, h2ClientSide(stream, headers, () => resets.add())));
    session.on('error', (error: Error) => reporter.fail('connection-failed', id, errorCodeOf(error, TlsErrorCode.H2SessionFailed), error.message));
    session.once('close', () => {
      client.destroy();
      state.origin.destroy();
    });
  }

  const h1Server = http.createServer({ requestTimeout: 0 });
  // Each bumped h1 connection's socket times out after idleTimeoutMs without traffic (Node destroys it: no 'timeout' listener).
  h1Server.setTimeout(idleTimeoutMs);
  h1Server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const state = bumpedH1.get(req.socket);
    if (state === undefined) return void req.socket.destroy();
    serveExchange(state, h1ClientSide(req, res));
  });
  h1Server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    metrics.errors.inc({ code: error.code ?? TlsErrorCode.HttpParse });
    if (socket.writable && error.code !== 'ECONNRESET') socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    socket.destroy();
  });

  /**
   * An exchange whose own code fails (a throw it did not expect) ends that exchange only:
   * a rejection left unhandled would end the process, and with it everyone's connections.
   */
  function serveExchange(state: BumpedConnection, side: ClientSide): void {
    exchange(state, side).catch((error: unknown) => {
      metrics.errors.inc({ code: TlsErrorCode.Internal });
      reporter.logger.error({ err: error, connectionId: state.conn.id }, 'internal error while serving a bumped exchange');
      side.answer(502, `502 Bad Gateway: ${TlsErrorCode.Internal}\n`);
    });
  }

  /** One request through the inspectors to the origin and back, reported once when it ends, however it ends. */
  async function exchange(state: BumpedConnection, side: ClientSide): Promise<void> {
    const sequence = ++state.sequence;
    let requestBytes = 0;
    let responseBytes = 0;
    let status: number | undefined;
    let failure: { code: string; message: string } | undefined;
    let decision: Decision | undefined;
    let reported = false;
    const report = (): void => {
      if (reported) return;
      reported = true;
      const exchange: TlsExchange = {
        connectionId: state.conn.id,
        sni: state.sni,
        sequence,
        protocols: { client: side.protocol, origin: state.origin.protocol },
        ...(decision !== undefined && { decision }),
        request: { method: side.method, url: side.path, host: side.authority, bodyBytes: requestBytes },
        ...(status !== undefined && { response: { status, bodyBytes: responseBytes } }),
        ...(failure !== undefined && { error: failure }),
      };
      reporter.exchange(exchange);
    };
    const fail = (code: string, message: string, answer: number | undefined): void => {
      failure = { code, message };
      metrics.errors.inc({ code });
      if (answer !== undefined) {
        status = answer;
        side.answer(answer, `${answer} ${http.STATUS_CODES[answer] ?? 'Error'}: ${code}\n`);
      }
      report();
    };
    const cancel = new AbortController();
    side.onGone(() => {
      cancel.abort();
      if (failure === undefined && !reported) failure = { code: 'ECONNRESET', message: 'the client left before the response was complete' };
      report();
    });

    const request = requestInfo(state, side);
    if (request === undefined) return fail(TlsErrorCode.HttpParse, `no usable request target or authority: ${side.method} ${side.path.slice(0, 200)} (${(side.authority ?? '').slice(0, 200)})`, 400);
    // The rules judge the host a request names, but its bytes go to the server this connection
    // was verified for: a name that server's certificate does not cover (a request for
    // allowed.example on a connection to blocked.example, which an attacker's server would
    // serve) is misdirected (RFC 9110 §15.5.20). Names the certificate covers stay allowed,
    // as HTTP/2 connection coalescing uses them.
    if (request.host !== undefined && request.host !== state.sni?.toLowerCase() && tls.checkServerIdentity(request.host, state.originCertificate) !== undefined) {
      return fail(TlsErrorCode.Misdirected, `the request names ${request.host}, which the origin's certificate for ${state.sni ?? state.conn.originalDestination.address} does not cover`, 421);
    }
    try {
      decision = await decide(inspectors, request);
    } catch (error) {
      return fail(TlsErrorCode.InspectorFailed, (error as Error).message, 502);
    }
    if (cancel.signal.aborted) return;
    let headers: http.OutgoingHttpHeaders = side.headers;
    switch (decision.action) {
      case 'block':
        // Answered on this exchange only: an h2 client's other streams carry on.
        status = decision.status;
        side.answer(decision.status, `${decision.reason}\n`);
        return report();
      case 'annotate':
        headers = { ...side.headers, ...decision.headers };
        break;
      case 'allow':
        break;
      default:
        return unreachable(decision);
    }
    // Paused first, so that counting does not start the flow: the h2 leg may await a new
    // origin session before it pipes, and bytes that flowed meanwhile would be lost.
    side.body.pause();
    side.body.on('data', (chunk: Buffer) => (requestBytes += chunk.length));
    let response: OriginResponse;
    try {
      response = await state.origin.send(
        { method: side.method, path: side.path, authority: request.authority ?? defaultAuthorityOf(state), headers, hasBody: side.hasBody },
        side.body,
        cancel.signal,
      );
    } catch (error) {
      if (cancel.signal.aborted) return;
      return fail(errorCodeOf(error, TlsErrorCode.OriginFailed), (error as Error).message, 502);
    }
    try {
      for (const inspector of responseInspectors) await inspector.inspectResponse?.(request, { status: response.status, headers: response.headers });
    } catch (error) {
      response.body.destroy();
      return fail(TlsErrorCode.InspectorFailed, (error as Error).message, 502);
    }
    // HTTP/2 carries a final status of 200–599 only (and node:http2 throws for any other);
    // an HTTP/1.1 origin may send 100–999: what the client's leg cannot carry is a 502.
    if (side.protocol === 'h2' && (response.status < 200 || response.status > 599)) {
      response.body.destroy();
      return fail(TlsErrorCode.OriginFailed, `the origin answered status ${response.status}, which HTTP/2 cannot carry`, 502);
    }
    status = response.status;
    const out = side.respond(response.status, withoutConnectionHeaders(response.headers));
    if (out === undefined) return void response.body.destroy();
    response.body.on('data', (chunk: Buffer) => (responseBytes += chunk.length));
    // Registered before pipe()'s own 'end' listener: the trailers are in place when it ends `out`.
    response.body.once('end', () => side.setTrailers(trailerFields(response.trailers())));
    // pipe(), not pipeline(): pipeline makes and aborts an AbortController per call, and its
    // DOMException was some 3% of a bumped h2 request's CPU. The outcome is settled here.
    let settled = false;
    const settle = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      // A client that closes as soon as it has the last byte makes a "premature close" of a
      // response already ended: that exchange is complete.
      if (error !== undefined && !cancel.signal.aborted && !out.writableEnded) {
        failure = { code: errorCodeOf(error, TlsErrorCode.OriginFailed), message: error.message };
        metrics.errors.inc({ code: failure.code });
        side.abort();
      }
      if (error !== undefined) response.body.destroy();
      report();
    };
    response.body.once('error', settle);
    // An origin stream that closes before its end (a reset) emits no error of its own.
    response.body.once('close', () => {
      if (!response.body.readableEnded) settle(Object.assign(new Error('the origin closed the response before its end'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    });
    out.once('finish', () => settle(undefined));
    out.once('close', () => settle(out.writableFinished ? undefined : new Error('the client closed before the response was complete')));
    out.on('error', () => undefined); // its 'close' settles
    response.body.pipe(out);
  }

  return { bump, close: () => void h1Server.close() };
}

/** The authority a request that names none is sent with: the SNI, or the address. */
function defaultAuthorityOf(state: BumpedConnection): string {
  return state.sni ?? hostForUrl(state.conn.originalDestination.address);
}

/** The inspectors' view of a request: the same `RequestInfo` coproxy-http builds, from either protocol. */
function requestInfo(state: BumpedConnection, side: ClientSide): RequestInfo | undefined {
  // Origin-form only: an absolute-form or `*` target has no place inside a TLS connection to one origin.
  if (!side.path.startsWith('/')) return undefined;
  // No fragment, as coproxy-http refuses it: the readings take `#` for a byte of the path
  // (`/admin#/../public` is `/public` to them), while an origin that parses the target as a
  // URL cuts the fragment off and routes `/admin`.
  if (side.path.includes('#')) return undefined;
  const query = side.path.indexOf('?');
  // Every reading of the path an origin could act on, canonical (`/%61dmin`, `//admin` and
  // `/x/../admin` are `/admin`), as coproxy-http gives its rules; a path origins disagree on
  // outright (a bad or NUL escape) has no usable reading: 400.
  const paths = pathReadings(query === -1 ? side.path : side.path.slice(0, query));
  if (paths === undefined) return undefined;
  // A request without one (HTTP/1.0 without Host, h2 without :authority, or an empty one) is
  // sent the connection's own (the SNI, or the address): the rules judge that, as the origin
  // gets it. Hosts are read as coproxy-http reads them (core's canonicalAuthority: case, a
  // trailing dot, IPv6 forms); one it refuses (user information, a bad port, an escape) has
  // no reading a rule could match: 400.
  const parsed = canonicalAuthority(side.authority === undefined || side.authority === '' ? defaultAuthorityOf(state) : side.authority);
  if (parsed === undefined || parsed.host === '') return undefined;
  return {
    method: side.method,
    url: side.path,
    target: side.path,
    path: paths[0]!,
    paths,
    host: parsed.host,
    port: parsed.port,
    authority: parsed.authority,
    httpVersion: side.protocol === 'h2' ? '2.0' : '1.1',
    headers: side.headers,
    connection: state.info,
    upgrade: false,
  };
}

/**
 * Trailer fields as forwarded: the hop's own and pseudo-headers removed (as for headers), and
 * the framing fields a trailer must not carry (RFC 9110 §6.5.1); undefined when none are left.
 */
function trailerFields(trailers: http.IncomingHttpHeaders | http.OutgoingHttpHeaders | undefined): http.OutgoingHttpHeaders | undefined {
  if (trailers === undefined) return undefined;
  const out = withoutConnectionHeaders(trailers as http.IncomingHttpHeaders);
  delete out['content-length'];
  delete out.te;
  return Object.keys(out).length === 0 ? undefined : out;
}

/** Headers that belong to one HTTP/1.1 hop (RFC 9110 §7.6.1) and that HTTP/2 forbids (RFC 9113 §8.2.2): never forwarded either way. */
const CONNECTION_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host', 'http2-settings']);

function withoutConnectionHeaders(headers: http.IncomingHttpHeaders): http.IncomingHttpHeaders {
  const out: http.IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name.startsWith(':') || CONNECTION_HEADERS.has(name)) continue;
    // `te: trailers` is the one TE value HTTP/2 allows; anything else is this hop's.
    if (name === 'te' && value !== 'trailers') continue;
    out[name] = value;
  }
  return out;
}

function h1ClientSide(req: http.IncomingMessage, res: http.ServerResponse): ClientSide {
  return {
    protocol: 'http/1.1',
    method: req.method ?? 'GET',
    path: req.url ?? '/',
    authority: req.headers.host,
    headers: withoutConnectionHeaders(req.headers),
    body: req,
    // Node's parser read the body by one of these (and refused a request with both): the framing itself is not forwarded.
    hasBody: req.headers['transfer-encoding'] !== undefined || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0'),
    respond(status, headers) {
      if (res.destroyed) return undefined;
      res.writeHead(status, headers);
      return res;
    },
    // Node writes them after the last chunk of a chunked response; a response with a
    // Content-Length (or to an HTTP/1.0 client) has no place for them: they are dropped.
    setTrailers(trailers) {
      if (trailers !== undefined && !res.writableEnded) res.addTrailers(trailers);
    },
    answer(status, text) {
      if (res.headersSent || res.destroyed) return void res.destroy();
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) }).end(text);
    },
    abort: () => void res.destroy(),
    onGone(callback) {
      // Ended, not finished: a client may hang up as soon as it has the last byte.
      res.once('close', () => {
        if (!res.writableEnded) callback();
      });
    },
  };
}

function h2ClientSide(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, onPeerReset: () => void): ClientSide {
  let endedByUs = false;
  // A stream the peer resets before we answered it: what a rapid-reset attack is made of.
  // Counted at its close, not by 'aborted': a stream whose HEADERS and RST_STREAM node:http2
  // reads in one go closes without 'aborted' when the session runs on a JS stream.
  stream.once('close', () => {
    if (!endedByUs && stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR && (stream.aborted || !stream.headersSent)) onPeerReset();
  });
  stream.on('error', () => undefined); // the 'close' below reports it; an unhandled 'error' would crash the process
  let responseTrailers: http.OutgoingHttpHeaders | undefined;
  return {
    protocol: 'h2',
    method: headers[':method'] ?? 'GET',
    path: headers[':path'] ?? '',
    authority: headers[':authority'] ?? headers.host,
    headers: withoutConnectionHeaders(headers),
    body: stream,
    hasBody: !stream.endAfterHeaders,
    respond(status, responseHeaders) {
      if (stream.destroyed || stream.closed) return undefined;
      // The stream ends with the origin's trailers (gRPC's grpc-status), or an empty end without any.
      stream.once('wantTrailers', () => stream.sendTrailers(responseTrailers ?? {}));
      stream.respond({ ...responseHeaders, ':status': status }, { waitForTrailers: true });
      return stream;
    },
    setTrailers(trailers) {
      responseTrailers = trailers;
    },
    answer(status, text) {
      if (stream.destroyed || stream.closed) return;
      if (stream.headersSent) return this.abort();
      stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
      stream.end(text);
    },
    abort() {
      endedByUs = true;
      stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    },
    onGone(callback) {
      // Ended, not finished: a client may close the session as soon as it has END_STREAM.
      stream.once('close', () => {
        if (!stream.writableEnded || stream.rstCode !== http2.constants.NGHTTP2_NO_ERROR) callback();
      });
    },
  };
}

/** How long an idle h2 session's GOAWAY may take to reach its client before the session is cut. */
const IDLE_LINGER_MS = 1000;

/** An IPv6 address in brackets, for an authority. */
function hostForUrl(address: string): string {
  return address.includes(':') ? `[${address}]` : address;
}

function isCertificateError(code: string): boolean {
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|HOSTNAME|EXPIRED/.test(code);
}

/** HTTP/1.1 to the origin over one verified TLS connection at a time, replaced when it closes. */
class H1OriginLeg implements OriginLeg {
  readonly protocol = 'http/1.1';
  private readonly agent: OriginAgent;
  constructor(first: tls.TLSSocket, reconnect: () => Promise<tls.TLSSocket>) {
    this.agent = new OriginAgent(first, reconnect);
  }

  send(head: ForwardedHead, body: Readable, signal: AbortSignal): Promise<OriginResponse> {
    return new Promise((resolve, reject) => {
      // A body without a length is sent chunked whatever the method: Node's client frames a
      // GET, HEAD, DELETE, OPTIONS body (an h2 GET with DATA, an h1 chunked GET) with neither
      // Content-Length nor chunked, and the origin would read those bytes as the next,
      // uninspected request on the connection (I6).
      const framing = head.hasBody && head.headers['content-length'] === undefined ? { 'transfer-encoding': 'chunked' } : {};
      const upstream = http.request({ agent: this.agent, method: head.method, path: head.path, headers: { ...head.headers, ...framing, host: head.authority }, setHost: false, signal });
      upstream.once('response', (res: http.IncomingMessage) =>
        resolve({ status: res.statusCode ?? 502, headers: res.headers, body: res, trailers: () => (Object.keys(res.trailers).length === 0 ? undefined : res.trailers) }),
      );
      upstream.once('error', reject);
      body.pipe(upstream);
    });
  }

  destroy(): void {
    this.agent.destroy();
  }
}

/** HTTP/2 to the origin: one session at a time over a verified TLS connection, replaced when it closes. */
class H2OriginLeg implements OriginLeg {
  readonly protocol = 'h2';
  private current: Promise<http2.ClientHttp2Session> | undefined;
  private live: http2.ClientHttp2Session | undefined;
  private destroyed = false;

  constructor(
    first: tls.TLSSocket,
    private readonly reconnect: () => Promise<tls.TLSSocket>,
    private readonly authority: string,
  ) {
    this.current = Promise.resolve(this.open(first));
  }

  private open(socket: tls.TLSSocket): http2.ClientHttp2Session {
    // The URL names the origin for node:http2; the socket is ours, already verified.
    const session = http2.connect(`https://${this.authority}`, { createConnection: () => socket, settings: { enablePush: false } });
    // A failed session fails its open streams (each a 502 of its own); the next request opens another.
    session.on('error', () => undefined);
    const forget = (): void => {
      if (this.live !== session) return;
      this.live = undefined;
      this.current = undefined;
    };
    session.once('close', forget);
    session.once('goaway', forget);
    this.live = session;
    return session;
  }

  private session(): Promise<http2.ClientHttp2Session> {
    if (this.destroyed) return Promise.reject(new Error('the bumped connection is closed'));
    this.current ??= this.reconnect().then((socket) => this.open(socket));
    return this.current;
  }

  async send(head: ForwardedHead, body: Readable, signal: AbortSignal): Promise<OriginResponse> {
    const session = await this.session();
    return new Promise((resolve, reject) => {
      // A request without a body ends with its HEADERS frame (END_STREAM), not with an empty DATA frame after it.
      const stream = session.request({ ...head.headers, ':method': head.method, ':path': head.path, ':authority': head.authority, ':scheme': 'https' }, { signal, endStream: !head.hasBody });
      let responseTrailers: http.IncomingHttpHeaders | undefined;
      stream.once('trailers', (received: http2.IncomingHttpHeaders) => (responseTrailers = received));
      stream.once('response', (headers) => resolve({ status: Number(headers[':status']), headers, body: stream, trailers: () => responseTrailers }));
      stream.once('error', reject);
      if (head.hasBody) body.pipe(stream);
      else body.resume(); // nothing to send: read to its end so the client's side completes
    });
  }

  destroy(): void {
    this.destroyed = true;
    void this.current?.then(
      (session) => session.destroy(),
      () => undefined,
    );
  }
}

/** The bumped connection's h1 requests go to the origin over one verified TLS connection, replaced when it closes. */
class OriginAgent extends http.Agent {
  private first: tls.TLSSocket | undefined;
  constructor(
    first: tls.TLSSocket,
    private readonly reconnect: () => Promise<tls.TLSSocket>,
  ) {
    super({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 });
    this.first = first;
  }

  override createConnection(_options: unknown, callback: (error: Error | null, socket?: Duplex) => void): undefined {
    const first = this.first;
    this.first = undefined;
    if (first !== undefined && !first.destroyed) {
      callback(null, first);
      return undefined;
    }
    this.reconnect().then(
      (socket) => callback(null, socket),
      (error: Error) => callback(error),
    );
    return undefined;
  }

  override destroy(): void {
    this.first?.destroy();
    super.destroy();
  }
}

/** Adding a member to a verdict union without a branch above breaks the build here. */
function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
