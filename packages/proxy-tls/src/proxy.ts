import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import {
  type AcceptedConnection,
  type BackendName,
  type Destination,
  type Endpoint,
  type FailMode,
  type MatchRule,
  type RedirectorEvent,
  createRedirector,
  relay,
} from '@coproxy/core';
import pino, { type Logger } from 'pino';
import { Observable, Subject, type Subscription } from 'rxjs';
import { CertificateAuthority } from './ca.js';
import { type ClientHello, ClientHelloError, type SniAnomaly, parseClientHello } from './client-hello.js';
import { classifyFirstBytes } from './first-bytes.js';
import { ja3, ja4 } from './fingerprint.js';
import { TlsProxyMetrics } from './metrics.js';
import { type Action, type PolicyFile, compilePolicy, loadPolicy, parsePolicy } from './policy.js';

export interface TlsProxyOptions {
  readonly id: string;
  readonly priority: number;
  /** Default every TCP connection to port 443. */
  readonly match?: MatchRule;
  readonly backend?: BackendName;
  readonly failMode?: FailMode;
  readonly registry?: string;
  readonly markMask?: number;
  /** A policy file's content or path; without one every handshake is spliced. */
  readonly policy?: PolicyFile | string;
  /** Bump mode: the CA directory (created on first use) or an opened CA. Required for `bump`. */
  readonly ca?: { readonly dir: string } | CertificateAuthority;
  /** Bump mode: PEM bundle to verify origins with, instead of Node's system store. */
  readonly originCa?: string | Buffer;
  /**
   * What to do with a connection whose first bytes are neither TLS nor a protocol this proxy
   * recognises (HTTP/1.x, the HTTP/2 preface): bytes of another protocol, a stream that
   * starts like TLS but is not a ClientHello, a client silent for `sniffTimeoutMs`.
   * `block` (the default) closes it, after a TLS alert when it started like TLS; `relay`
   * passes it on unchanged, uninspected. Either way: a log line, a metric, an event.
   */
  readonly unrecognised?: UnrecognisedAction;
  /**
   * What a `bump` decision becomes when bump cannot be done: the client offers only ALPN
   * protocols bump does not speak (`h2` alone, `grpc-exp`…), or its hello carries
   * `encrypted_client_hello` (the name the policy matched may not be the one visited).
   * `block` (the default) answers access_denied; `splice` relays the handshake uninspected,
   * the operator's explicit choice. Either way the handshake event's `note` says why.
   */
  readonly unbumpable?: UnbumpableAction;
  /** A client that sends nothing this long (a server-first protocol) is unrecognised. Default 1000 ms. */
  readonly sniffTimeoutMs?: number;
  /** The ClientHello (or another protocol's first line) must be complete within this long. Default 10 000 ms. */
  readonly helloTimeoutMs?: number;
  /** Largest ClientHello accepted. Default 65 536 bytes. */
  readonly maxHelloBytes?: number;
  /** Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  readonly logger?: Logger;
  /**
   * Default true. `false` makes onward connections carry only this proxy's own redirect,
   * as a vendor that merely excludes itself would: for demonstrating the loop records
   * prevent (the testbed's `--drop-records`).
   */
  readonly propagateRecords?: boolean;
}

/** The `unrecognised` policy: what happens to bytes that are neither TLS nor a protocol this proxy knows. */
export type UnrecognisedAction = 'block' | 'relay';

/** The `unbumpable` policy: what a bump decision becomes when bump cannot be done. */
export type UnbumpableAction = 'block' | 'splice';

/**
 * Why a connection was unrecognised: `silent` (no byte within the sniff timeout), `unknown`
 * (bytes of no protocol it recognises), `malformed-tls` (the first byte says TLS, the rest
 * is no ClientHello: `code` is the parser's), `incomplete` (the client ended, or the
 * deadline passed, before its first bytes could be told apart).
 */
export type UnrecognisedReason = 'silent' | 'unknown' | 'malformed-tls' | 'incomplete';

/** What was relayed without inspection: a recognised protocol, or unrecognised bytes under `relay`. */
export type RelayedProtocol = 'http1' | 'h2' | 'unrecognised';

/** One inspected ClientHello and what the policy did with it. */
export interface Handshake {
  readonly connectionId: string;
  readonly destination: Destination;
  readonly redirectedBy: readonly string[];
  /** The server name, lower-cased and without a trailing dot; undefined when none is usable. */
  readonly sni: string | undefined;
  /** Present when server_name was there but unusual: the fact the policy saw. */
  readonly sniAnomaly?: SniAnomaly;
  readonly alpn: readonly string[];
  readonly supportedVersions: readonly number[];
  readonly cipherSuites: readonly number[];
  readonly ja3: string;
  readonly ja3Text: string;
  readonly ja4: string;
  /** An outer encrypted_client_hello was present: `sni` is then the public (outer) name. */
  readonly ech: boolean;
  readonly records: number;
  readonly action: Action;
  /** The policy rule that decided; undefined for the default. */
  readonly rule: string | undefined;
  /** Set when the action taken differs from the policy's (e.g. bump impossible: spliced). */
  readonly note?: string;
}

/** A decrypted HTTP/1.1 exchange in bump mode. */
export interface TlsExchange {
  readonly connectionId: string;
  readonly sni: string | undefined;
  readonly sequence: number;
  readonly request: { readonly method: string; readonly url: string; readonly host: string | undefined; readonly bodyBytes: number };
  readonly response?: { readonly status: number; readonly bodyBytes: number };
  readonly error?: { readonly code: string; readonly message: string };
}

export type TlsProxyEvent =
  | RedirectorEvent
  /** Relayed without inspection: another protocol recognised, or unrecognised bytes under `relay`. */
  | { readonly type: 'opaque'; readonly connectionId: string; readonly protocol: RelayedProtocol }
  /** First bytes neither TLS nor a recognised protocol, and what the `unrecognised` policy did. */
  | {
      readonly type: 'unrecognised';
      readonly connectionId: string;
      readonly action: UnrecognisedAction;
      readonly reason: UnrecognisedReason;
      /** For `malformed-tls`: the ClientHello parser's code. */
      readonly code?: string;
    }
  | { readonly type: 'hello-rejected'; readonly connectionId: string; readonly code: string; readonly message: string }
  | { readonly type: 'origin-rejected'; readonly connectionId: string; readonly code: string; readonly message: string }
  | { readonly type: 'connection-failed'; readonly connectionId: string; readonly code: string; readonly message: string };

export interface TlsProxy extends AsyncDisposable {
  readonly id: string;
  readonly handshakes$: Observable<Handshake>;
  readonly exchanges$: Observable<TlsExchange>;
  readonly events$: Observable<TlsProxyEvent>;
  readonly metrics: TlsProxyMetrics;
  listening(): Promise<Endpoint>;
  close(): Promise<void>;
}

/** TLS alert descriptions (RFC 8446 §6). */
const ALERT = { handshakeFailure: 40, badCertificate: 42, accessDenied: 49, decodeError: 50, internalError: 80 } as const;

/** A fatal alert record, sent in the clear before any key exchange. */
export function alertRecord(description: number): Buffer {
  return Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]);
}

/** Bump mode inspects HTTP/1.1 only: it is all it offers either side, and it says so. */
const BUMP_ALPN = 'http/1.1';

/**
 * A transparent inspecting TLS proxy on a coproxy redirector. It reads each redirected
 * connection's ClientHello with its own strict parser (SNI, ALPN, versions, suites, ECH,
 * JA3, JA4), asks the policy, then splices (forwards the bytes unchanged), blocks (a TLS
 * alert, then close) or bumps (terminates TLS with a leaf minted from a local CA, lets the
 * decrypted HTTP/1.1 exchanges through `exchanges$`, and re-encrypts to the origin, whose
 * certificate is verified). An HTTP/1.x request or the HTTP/2 preface is relayed byte for
 * byte (another vendor in the chain may inspect it); anything else follows the
 * `unrecognised` policy (block by default, or relay).
 */
export function createTlsProxy(options: TlsProxyOptions): TlsProxy {
  const unrecognisedAction = oneOf(options.unrecognised, ['block', 'relay'] as const, 'unrecognised');
  const unbumpable = oneOf(options.unbumpable, ['block', 'splice'] as const, 'unbumpable');
  if (unrecognisedAction !== 'block' && unrecognisedAction !== 'relay') throw new TypeError(`unrecognised: must be 'block' or 'relay', got ${String(unrecognisedAction)}`);
  const settings = {
    sniffTimeoutMs: positive(options.sniffTimeoutMs, 1000, 'sniffTimeoutMs'),
    helloTimeoutMs: positive(options.helloTimeoutMs, 10_000, 'helloTimeoutMs'),
    maxHelloBytes: positive(options.maxHelloBytes, 65_536, 'maxHelloBytes'),
    connectTimeoutMs: positive(options.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
  };
  const logger = options.logger ?? pino({ level: 'silent' });
  const metrics = new TlsProxyMetrics();
  const policyFile = options.policy === undefined ? {} : typeof options.policy === 'string' ? loadPolicy(options.policy) : parsePolicy(options.policy);
  const decidePolicy = compilePolicy(policyFile);
  const needsCa = policyFile.default === 'bump' || (policyFile.rules ?? []).some((r) => r.action === 'bump');
  if (needsCa && options.ca === undefined) throw new TypeError("the policy bumps some handshakes: give the 'ca' option (a CA directory)");
  const caReady: Promise<CertificateAuthority> | undefined =
    options.ca === undefined ? undefined : options.ca instanceof CertificateAuthority ? Promise.resolve(options.ca) : CertificateAuthority.open({ dir: options.ca.dir });

  // Built once: parsing the origin bundle per bumped connection was ~5% of a bump's CPU.
  const originContext = options.originCa === undefined ? undefined : tls.createSecureContext({ ca: options.originCa });
  const handshakes = new Subject<Handshake>();
  const exchanges = new Subject<TlsExchange>();
  const proxyEvents = new Subject<TlsProxyEvent>();
  const emit = (event: TlsProxyEvent): void => {
    if (proxyEvents.observed) proxyEvents.next(event);
  };
  const fail = (type: 'hello-rejected' | 'origin-rejected' | 'connection-failed', connectionId: string, code: string, message: string): void => {
    metrics.errors.inc({ code });
    logger.warn({ connectionId, code, message }, type);
    emit({ type, connectionId, code, message });
  };

  const redirector = createRedirector({
    id: options.id,
    priority: options.priority,
    match: options.match ?? { ports: [443] },
    ...(options.backend !== undefined && { backend: options.backend }),
    ...(options.failMode !== undefined && { failMode: options.failMode }),
    ...(options.registry !== undefined && { registry: options.registry }),
    ...(options.markMask !== undefined && { markMask: options.markMask }),
  });

  async function onAccepted(conn: AcceptedConnection): Promise<void> {
    metrics.openConnections.inc();
    let first: FirstBytes;
    try {
      first = await readFirstBytes(conn.socket, settings);
    } catch (error) {
      // A TLS stream that stalled (HELLO_TIMEOUT) or a socket error: closed, never relayed,
      // whatever the unrecognised policy: TLS is this proxy's own protocol, and relaying a
      // hello it could not read in time would let a slow client past the policy.
      fail('hello-rejected', conn.id, errorCode(error, 'HELLO_FAILED'), (error as Error).message);
      conn.socket.destroySoon();
      return;
    }
    switch (first.kind) {
      case 'closed':
        conn.socket.destroy(); // closed before a byte
        return;
      case 'recognised':
        metrics.connections.inc({ kind: first.protocol });
        emit({ type: 'opaque', connectionId: conn.id, protocol: first.protocol });
        logger.debug({ connectionId: conn.id, protocol: first.protocol }, 'relayed'); // debug: once per HTTP connection in a chain
        return splice(conn, first.head);
      case 'unrecognised':
        return onUnrecognised(conn, first);
      case 'tls':
        return onHello(conn, first);
    }
  }

  function onUnrecognised(conn: AcceptedConnection, first: Extract<FirstBytes, { kind: 'unrecognised' }>): Promise<void> | undefined {
    const { reason, head, error } = first;
    if (error !== undefined) fail('hello-rejected', conn.id, error.code, error.message);
    else metrics.connections.inc({ kind: 'opaque' });
    const action = unrecognisedAction;
    metrics.unrecognised.inc({ action });
    const facts = { connectionId: conn.id, action, reason, ...(error !== undefined && { code: error.code }) };
    // The first bytes, so that an operator can tell what was there.
    const firstBytes = head.subarray(0, 16).toString('hex');
    if (action === 'block') logger.warn({ ...facts, firstBytes }, 'unrecognised');
    else logger.info({ ...facts, firstBytes }, 'unrecognised');
    emit({ type: 'unrecognised', ...facts });
    switch (action) {
      case 'relay':
        emit({ type: 'opaque', connectionId: conn.id, protocol: 'unrecognised' });
        return splice(conn, head);
      case 'block':
        // A TLS peer understands an alert; anything else just gets the close.
        if (looksLikeTls(head) && conn.socket.writable) conn.socket.end(alertRecord(ALERT.decodeError));
        conn.socket.destroySoon();
        return undefined;
    }
  }

  async function onHello(conn: AcceptedConnection, hello: { hello: ClientHello; bytes: Buffer }): Promise<void> {
    metrics.connections.inc({ kind: 'tls' });
    const sniAnomaly = hello.hello.serverNameAnomaly;
    const facts = { sni: hello.hello.serverName, alpn: hello.hello.alpn, ...fingerprints(hello.hello) };
    const decision = decidePolicy({ sni: facts.sni, sniAnomaly, alpn: facts.alpn, ja3: facts.ja3.hash, ja4: facts.ja4 });
    let action = decision.action;
    let note: string | undefined;
    // A bump that cannot be done is never silently a splice: that would let any client opt
    // out of inspection by its ALPN list or an ECH extension. The operator's `unbumpable`
    // policy decides, and the note says so.
    const outcome = `${unbumpable === 'block' ? 'blocked' : 'spliced'} (unbumpable: ${unbumpable})`;
    if (action === 'bump' && hello.hello.ech !== undefined) {
      // The real name is encrypted: the policy matched the outer name, not the one visited.
      action = unbumpable;
      note = `bump cannot see the inner name of an encrypted ClientHello (ECH): ${outcome}`;
    } else if (action === 'bump' && hello.hello.alpn.length > 0 && !hello.hello.alpn.includes(BUMP_ALPN)) {
      action = unbumpable;
      note = `bump needs ALPN ${BUMP_ALPN}, the client offered only ${hello.hello.alpn.join(', ')}: ${outcome}`;
    }
    metrics.handshakes.inc({ action });
    const handshake: Handshake = {
      connectionId: conn.id,
      destination: conn.originalDestination,
      redirectedBy: conn.records.redirectedBy,
      sni: facts.sni,
      ...(sniAnomaly !== undefined && { sniAnomaly }),
      alpn: facts.alpn,
      supportedVersions: hello.hello.supportedVersions,
      cipherSuites: hello.hello.cipherSuites,
      ja3: facts.ja3.hash,
      ja3Text: facts.ja3.text,
      ja4: facts.ja4,
      ech: hello.hello.ech !== undefined,
      records: hello.hello.records,
      action,
      rule: decision.rule,
      ...(note !== undefined && { note }),
    };
    logger.info({ handshake }, 'handshake');
    if (handshakes.observed) handshakes.next(handshake);
    switch (action) {
      case 'splice':
        return splice(conn, hello.bytes);
      case 'block':
        conn.socket.end(alertRecord(ALERT.accessDenied));
        conn.socket.destroySoon();
        return;
      case 'bump':
        return bump(conn, hello.bytes, facts.sni);
    }
  }

  async function splice(conn: AcceptedConnection, head: Buffer): Promise<void> {
    let upstream: net.Socket;
    try {
      upstream = await conn.connectOnward({ timeoutMs: settings.connectTimeoutMs, propagateRecords: options.propagateRecords ?? true });
    } catch (error) {
      fail('connection-failed', conn.id, errorCode(error, 'ORIGIN_UNREACHABLE'), (error as Error).message);
      conn.socket.destroy();
      return;
    }
    upstream.write(head);
    conn.socket.resume();
    const result = await relay(conn.socket, upstream);
    if (result.error !== undefined) fail('connection-failed', conn.id, errorCode(result.error, 'RESET'), result.error.message);
  }

  /** The origin first: if its certificate does not verify, the client gets an alert and never our leaf. */
  function connectOrigin(conn: AcceptedConnection, sni: string | undefined): Promise<tls.TLSSocket> {
    return conn.connectOnward({ timeoutMs: settings.connectTimeoutMs, propagateRecords: options.propagateRecords ?? true }).then(
      (onward) =>
        new Promise<tls.TLSSocket>((resolve, reject) => {
          const secure = tls.connect({
            socket: onward,
            ...(sni !== undefined && { servername: sni }),
            // Without SNI the certificate is checked against the destination address.
            host: sni ?? conn.originalDestination.address,
            ALPNProtocols: [BUMP_ALPN],
            ...(originContext !== undefined && { secureContext: originContext }),
            rejectUnauthorized: true,
          });
          secure.once('secureConnect', () => {
            secure.off('error', reject);
            resolve(secure);
          });
          secure.once('error', (error: Error) => {
            onward.destroy();
            reject(error);
          });
        }),
    );
  }

  async function bump(conn: AcceptedConnection, head: Buffer, sni: string | undefined): Promise<void> {
    let origin: tls.TLSSocket;
    let context: tls.SecureContext;
    let originReady: Promise<tls.TLSSocket> | undefined;
    try {
      const ca = await (caReady ?? Promise.reject(new Error('no CA configured')));
      originReady = connectOrigin(conn, sni);
      [origin, context] = await Promise.all([originReady, ca.contextFor(sni ?? conn.originalDestination.address)]);
    } catch (error) {
      // When minting failed, the origin may still connect: it must not stay open. (Its own
      // failure, if it failed too, is not reported twice: the first error is the event.)
      originReady?.then(
        (socket) => socket.destroy(),
        () => undefined,
      );
      const code = errorCode(error, 'ORIGIN_FAILED');
      fail('origin-rejected', conn.id, code, (error as Error).message);
      conn.socket.end(alertRecord(isCertificateError(code) ? ALERT.badCertificate : ALERT.handshakeFailure));
      conn.socket.destroySoon();
      return;
    }
    // The ClientHello already read is replayed into the TLS server socket.
    conn.socket.unshift(head);
    const client = new tls.TLSSocket(conn.socket, { isServer: true, secureContext: context, ALPNProtocols: [BUMP_ALPN] });
    client.on('error', (error: Error) => {
      fail('connection-failed', conn.id, errorCode(error, 'CLIENT_TLS_FAILED'), error.message);
      origin.destroy();
    });
    // Not resumed here: the TLS socket reads the replayed bytes out of the raw socket's
    // buffer on its next tick, and a flowing raw socket would hand them to nobody first.
    const agent = new OriginAgent(origin, () => connectOrigin(conn, sni));
    client.once('close', () => agent.destroy());
    const state = { conn, sni, agent, sequence: 0 };
    states.set(client, state);
    bumpServer.emit('connection', client);
  }

  const states = new WeakMap<Duplex, { conn: AcceptedConnection; sni: string | undefined; agent: OriginAgent; sequence: number }>();
  const bumpServer = http.createServer({ requestTimeout: 0 });
  bumpServer.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const state = states.get(req.socket);
    if (state === undefined) return void req.socket.destroy();
    const sequence = ++state.sequence;
    const host = req.headers.host;
    let requestBytes = 0;
    let responseBytes = 0;
    let status: number | undefined;
    let failure: { code: string; message: string } | undefined;
    const done = (): void => {
      const exchange: TlsExchange = {
        connectionId: state.conn.id,
        sni: state.sni,
        sequence,
        request: { method: req.method ?? 'GET', url: req.url ?? '/', host, bodyBytes: requestBytes },
        ...(status !== undefined && { response: { status, bodyBytes: responseBytes } }),
        ...(failure !== undefined && { error: failure }),
      };
      metrics.exchanges.inc();
      logger.info({ exchange }, 'exchange');
      if (exchanges.observed) exchanges.next(exchange);
    };
    res.once('close', done);
    const upstream = http.request({
      agent: state.agent,
      method: req.method,
      path: req.url,
      headers: withoutHopByHop(req.rawHeaders),
      setHost: false,
    });
    upstream.on('response', (upstreamRes: http.IncomingMessage) => {
      status = upstreamRes.statusCode ?? 502;
      res.writeHead(status, upstreamRes.statusMessage, withoutHopByHop(upstreamRes.rawHeaders));
      upstreamRes.on('data', (chunk: Buffer) => (responseBytes += chunk.length));
      upstreamRes.pipe(res);
      upstreamRes.once('error', () => res.destroy());
    });
    upstream.on('error', (error: NodeJS.ErrnoException) => {
      failure = { code: errorCode(error, 'ORIGIN_FAILED'), message: error.message };
      metrics.errors.inc({ code: failure.code });
      if (!res.headersSent) {
        status = 502;
        res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' }).end(`502 Bad Gateway: ${failure.code}\n`);
      } else {
        res.destroy();
      }
    });
    res.once('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.on('data', (chunk: Buffer) => (requestBytes += chunk.length));
    req.pipe(upstream);
  });
  bumpServer.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    metrics.errors.inc({ code: error.code ?? 'HTTP_PARSE' });
    if (socket.writable && error.code !== 'ECONNRESET') socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    socket.destroy();
  });

  let subscription: Subscription | undefined;
  const bytesSubscription = redirector.events$.subscribe((event) => {
    if (event.type === 'closed') {
      metrics.openConnections.dec();
      metrics.bytes.inc({ direction: 'from_client' }, event.bytesFromClient);
      metrics.bytes.inc({ direction: 'to_client' }, event.bytesToClient);
    }
  });
  const installed = new Promise<Endpoint>((resolve, reject) => {
    subscription = redirector.accepted$.subscribe({
      next: (conn) => void onAccepted(conn),
      error: (error: unknown) => {
        logger.error({ err: error }, 'redirector failed');
        reject(error instanceof Error ? error : new Error(String(error)));
        handshakes.error(error);
      },
    });
    // Ready once the CA, when there is one, is usable too: its files exist from then on.
    Promise.all([redirector.installed(), caReady]).then(([listening]) => resolve(listening), reject);
  });
  installed.catch((error: unknown) => logger.debug({ err: error }, 'install failed'));
  let closed = false;

  return {
    id: options.id,
    handshakes$: handshakes.asObservable(),
    exchanges$: exchanges.asObservable(),
    events$: new Observable<TlsProxyEvent>((subscriber) => {
      const a = redirector.events$.subscribe(subscriber);
      const b = proxyEvents.subscribe(subscriber);
      return () => {
        a.unsubscribe();
        b.unsubscribe();
      };
    }),
    metrics,
    listening: () => installed,
    async close() {
      if (closed) return;
      closed = true;
      subscription?.unsubscribe();
      await redirector.close();
      bytesSubscription.unsubscribe();
      bumpServer.close();
      handshakes.complete();
      exchanges.complete();
      proxyEvents.complete();
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
}

/** One hop's headers (RFC 9110 §7.6.1); a chunked transfer-encoding stays, Node frames it again. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']);

function withoutHopByHop(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

/** The bumped connection's requests go to the origin over one verified TLS connection, replaced when it closes. */
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

/** A connection's first bytes, sorted: a ClientHello, another protocol, or unrecognised (with why). */
type FirstBytes =
  | { readonly kind: 'closed' }
  | { readonly kind: 'tls'; readonly hello: ClientHello; readonly bytes: Buffer }
  | { readonly kind: 'recognised'; readonly protocol: 'http1' | 'h2'; readonly head: Buffer }
  | { readonly kind: 'unrecognised'; readonly reason: UnrecognisedReason; readonly head: Buffer; readonly error?: ClientHelloError };

/** A TLS peer would read an alert: a handshake record with a 3.x version. */
const looksLikeTls = (head: Buffer): boolean => head.length >= 2 && head[0] === 0x16 && head[1] === 0x03;

/**
 * Reads until the first bytes sort one way. Timers: nothing at all within `sniffTimeoutMs`
 * is a silent client; after the first byte, `helloTimeoutMs` (from the accept) bounds the
 * rest: a TLS stream still incomplete then is an error (HELLO_TIMEOUT), anything else
 * still undecided is unrecognised.
 */
function readFirstBytes(socket: net.Socket, settings: { sniffTimeoutMs: number; helloTimeoutMs: number; maxHelloBytes: number }): Promise<FirstBytes> {
  return new Promise((resolve, reject) => {
    let buffer: Buffer = Buffer.alloc(0);
    let settled = false;
    const finish = (error: Error | undefined, value?: FirstBytes): void => {
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (error !== undefined) reject(error);
      else resolve(value!);
    };
    const onData = (chunk: Buffer): void => {
      const first = buffer.length === 0;
      buffer = first ? chunk : Buffer.concat([buffer, chunk]);
      decide();
      // One timer per connection: after the first byte it is re-armed, once, for what is
      // left of helloTimeoutMs (a whole hello in the first segment never gets that far).
      if (first && !settled) {
        clearTimeout(timer);
        timer = setTimeout(onTimeout, Math.max(0, settings.helloTimeoutMs - (performance.now() - startedAt)));
      }
    };
    const decide = (): void => {
      const kind = classifyFirstBytes(buffer);
      switch (kind) {
        case 'undecided':
          return;
        case 'http1':
        case 'h2':
          return finish(undefined, { kind: 'recognised', protocol: kind, head: buffer });
        case 'unknown':
          return finish(undefined, { kind: 'unrecognised', reason: 'unknown', head: buffer });
        case 'tls':
          try {
            const result = parseClientHello(buffer, settings.maxHelloBytes);
            if (result.done) finish(undefined, { kind: 'tls', hello: result.hello, bytes: buffer });
          } catch (error) {
            if (!(error instanceof ClientHelloError)) return finish(error as Error);
            finish(undefined, { kind: 'unrecognised', reason: 'malformed-tls', head: buffer, error });
          }
          return;
      }
    };
    const onEnd = (): void => {
      if (buffer.length === 0) return finish(undefined, { kind: 'closed' });
      if (buffer[0] === 0x16) {
        const error = new ClientHelloError('MALFORMED', 'the client closed in the middle of its ClientHello', buffer.length);
        return finish(undefined, { kind: 'unrecognised', reason: 'malformed-tls', head: buffer, error });
      }
      finish(undefined, { kind: 'unrecognised', reason: 'incomplete', head: buffer });
    };
    const onError = (error: Error): void => finish(error);
    const onTimeout = (): void => {
      if (buffer.length === 0) return finish(undefined, { kind: 'unrecognised', reason: 'silent', head: buffer });
      if (buffer[0] === 0x16) return finish(Object.assign(new Error(`no complete ClientHello within ${settings.helloTimeoutMs} ms`), { code: 'HELLO_TIMEOUT' }));
      finish(undefined, { kind: 'unrecognised', reason: 'incomplete', head: buffer });
    };
    const startedAt = performance.now();
    let timer = setTimeout(onTimeout, Math.min(settings.sniffTimeoutMs, settings.helloTimeoutMs));
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onError);
  });
}

function fingerprints(hello: ClientHello): { ja3: { text: string; hash: string }; ja4: string } {
  return { ja3: ja3(hello), ja4: ja4(hello) };
}

function isCertificateError(code: string): boolean {
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|HOSTNAME|EXPIRED/.test(code);
}

function errorCode(error: unknown, fallback: string): string {
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : fallback;
}

/** A policy option from JavaScript may be any string: the first choice is the default, anything else is refused. */
function oneOf<TValue extends string>(value: TValue | undefined, choices: readonly [TValue, ...TValue[]], name: string): TValue {
  if (value === undefined) return choices[0];
  if (!choices.includes(value)) throw new RangeError(`${name}: one of ${choices.join(', ')}, got ${String(value)}`);
  return value;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result <= 0) throw new RangeError(`${name}: must be a positive integer, got ${String(result)}`);
  return result;
}
