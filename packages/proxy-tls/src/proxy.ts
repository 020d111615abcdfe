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
import { type ClientHello, ClientHelloError, parseClientHello } from './client-hello.js';
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
  /** The ClientHello must be complete within this long. Default 10 000 ms. */
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

/** One inspected ClientHello and what the policy did with it. */
export interface Handshake {
  readonly connectionId: string;
  readonly destination: Destination;
  readonly redirectedBy: readonly string[];
  readonly sni: string | undefined;
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
  | { readonly type: 'opaque'; readonly connectionId: string }
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
 * certificate is verified). Non-TLS traffic is passed through byte for byte.
 */
export function createTlsProxy(options: TlsProxyOptions): TlsProxy {
  const settings = {
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
    let hello: { hello: ClientHello; bytes: Buffer } | { opaque: Buffer } | undefined;
    try {
      hello = await readHello(conn.socket, settings.helloTimeoutMs, settings.maxHelloBytes);
    } catch (error) {
      const code = error instanceof ClientHelloError ? error.code : errorCode(error, 'HELLO_FAILED');
      fail('hello-rejected', conn.id, code, (error as Error).message);
      // Decode errors get a decode_error alert; a client that went silent just a close.
      if (error instanceof ClientHelloError && conn.socket.writable) conn.socket.end(alertRecord(ALERT.decodeError));
      conn.socket.destroySoon();
      return;
    }
    if (hello === undefined) return void conn.socket.destroy(); // closed before a byte
    if ('opaque' in hello) {
      metrics.connections.inc({ kind: 'opaque' });
      emit({ type: 'opaque', connectionId: conn.id });
      return splice(conn, hello.opaque);
    }
    metrics.connections.inc({ kind: 'tls' });
    const facts = { sni: hello.hello.serverName, alpn: hello.hello.alpn, ...fingerprints(hello.hello) };
    const decision = decidePolicy({ sni: facts.sni, alpn: facts.alpn, ja3: facts.ja3.hash, ja4: facts.ja4 });
    let action = decision.action;
    let note: string | undefined;
    if (action === 'bump' && hello.hello.ech !== undefined) {
      // The real name is encrypted: a leaf for the outer (public) name would break the
      // client's ECH, and the policy matched a name that is not the one being visited.
      action = 'splice';
      note = 'bump cannot see the inner name of an encrypted ClientHello (ECH): spliced';
    } else if (action === 'bump' && hello.hello.alpn.length > 0 && !hello.hello.alpn.includes(BUMP_ALPN)) {
      action = 'splice';
      note = `bump needs ALPN ${BUMP_ALPN}, the client offered only ${hello.hello.alpn.join(', ')}: spliced`;
    }
    metrics.handshakes.inc({ action });
    const handshake: Handshake = {
      connectionId: conn.id,
      destination: conn.originalDestination,
      redirectedBy: conn.records.redirectedBy,
      sni: facts.sni,
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

/** Reads until a whole ClientHello is in; `opaque` when the first byte says it is not TLS. */
function readHello(socket: net.Socket, timeoutMs: number, maxBytes: number): Promise<{ hello: ClientHello; bytes: Buffer } | { opaque: Buffer } | undefined> {
  return new Promise((resolve, reject) => {
    let buffer: Buffer = Buffer.alloc(0);
    const finish = (error: Error | undefined, value?: { hello: ClientHello; bytes: Buffer } | { opaque: Buffer }): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (error !== undefined) reject(error);
      else resolve(value);
    };
    const onData = (chunk: Buffer): void => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      try {
        const result = parseClientHello(buffer, maxBytes);
        if (result.done) finish(undefined, { hello: result.hello, bytes: buffer });
      } catch (error) {
        if (error instanceof ClientHelloError && error.code === 'NOT_TLS') finish(undefined, { opaque: buffer });
        else finish(error as Error);
      }
    };
    const onEnd = (): void =>
      buffer.length === 0 ? finish(undefined) : finish(new ClientHelloError('MALFORMED', 'the client closed in the middle of its ClientHello', buffer.length));
    const onError = (error: Error): void => finish(error);
    const timer = setTimeout(() => finish(Object.assign(new Error(`no complete ClientHello within ${timeoutMs} ms`), { code: 'HELLO_TIMEOUT' })), timeoutMs);
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

function positive(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result <= 0) throw new RangeError(`${name}: must be a positive integer, got ${String(result)}`);
  return result;
}
