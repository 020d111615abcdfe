import http from 'node:http';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { type AcceptedConnection, errorCodeOf } from '@coproxy/core';
import type { CertificateAuthority } from './ca.js';
import { TlsErrorCode } from './errors.js';
import type { TlsExchange } from './events.js';
import type { Reporter } from './reporter.js';
import type { OnwardSettings } from './splice.js';
import { ALERT, tlsAlertRecord } from './tls-alert.js';

/** Bump mode inspects HTTP/1.1 only: it is all it offers either side, and it says so. */
export const BUMP_ALPN = 'http/1.1';

export interface BumpOptions {
  /** The CA that mints the leaves; undefined when no policy rule bumps (then a bump fails). */
  readonly ca: Promise<CertificateAuthority> | undefined;
  /** PEM bundle to verify origins with, instead of Node's system store. */
  readonly originCa: string | Buffer | undefined;
  readonly onward: OnwardSettings;
  readonly reporter: Reporter;
}

/** The bump leg of the proxy: one HTTP/1.1 server for every bumped connection. */
export interface Bumper {
  /** Terminates the client's TLS (its ClientHello already read: `hello`) and proxies its requests to the origin. */
  bump(conn: AcceptedConnection, hello: Buffer, sni: string | undefined): Promise<void>;
  close(): void;
}

/** What the inner HTTP server needs to know of each bumped TLS socket it is handed. */
interface BumpedConnection {
  readonly conn: AcceptedConnection;
  readonly sni: string | undefined;
  readonly agent: OriginAgent;
  sequence: number;
}

/**
 * TLS termination with a leaf minted from the local CA, and a second HTTP proxy inside:
 * each decrypted HTTP/1.1 exchange is reported (`exchanges$`) and re-encrypted to the
 * origin, whose certificate is verified before the client sees any leaf of ours.
 */
export function createBumper({ ca, originCa, onward, reporter }: BumpOptions): Bumper {
  const { metrics } = reporter;
  // Built once: parsing the origin bundle per bumped connection was ~5% of a bump's CPU.
  const originContext = originCa === undefined ? undefined : tls.createSecureContext({ ca: originCa });
  const bumped = new WeakMap<Duplex, BumpedConnection>();

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
            ALPNProtocols: [BUMP_ALPN],
            ...(originContext !== undefined && { secureContext: originContext }),
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
    const client = new tls.TLSSocket(conn.socket, { isServer: true, secureContext: context, ALPNProtocols: [BUMP_ALPN] });
    client.on('error', (error: Error) => {
      reporter.fail('connection-failed', conn.id, errorCodeOf(error, TlsErrorCode.ClientTlsFailed), error.message);
      origin.destroy();
    });
    // Not resumed here: the TLS socket reads the replayed bytes out of the raw socket's
    // buffer on its next tick, and a flowing raw socket would hand them to nobody first.
    const agent = new OriginAgent(origin, () => connectOrigin(conn, sni));
    client.once('close', () => agent.destroy());
    bumped.set(client, { conn, sni, agent, sequence: 0 });
    server.emit('connection', client);
  }

  const server = http.createServer({ requestTimeout: 0 });
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const state = bumped.get(req.socket);
    if (state === undefined) return void req.socket.destroy();
    const sequence = ++state.sequence;
    const host = req.headers.host;
    let requestBytes = 0;
    let responseBytes = 0;
    let status: number | undefined;
    let failure: { code: string; message: string } | undefined;
    res.once('close', () => {
      const exchange: TlsExchange = {
        connectionId: state.conn.id,
        sni: state.sni,
        sequence,
        request: { method: req.method ?? 'GET', url: req.url ?? '/', host, bodyBytes: requestBytes },
        ...(status !== undefined && { response: { status, bodyBytes: responseBytes } }),
        ...(failure !== undefined && { error: failure }),
      };
      reporter.exchange(exchange);
    });
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
      failure = { code: errorCodeOf(error, TlsErrorCode.OriginFailed), message: error.message };
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
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    metrics.errors.inc({ code: error.code ?? TlsErrorCode.HttpParse });
    if (socket.writable && error.code !== 'ECONNRESET') socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    socket.destroy();
  });

  return { bump, close: () => void server.close() };
}

/** One hop's headers (RFC 9110 §7.6.1); a chunked transfer-encoding stays, Node frames it again. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']);

function withoutHopByHop(raw: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (!HOP_BY_HOP.has(raw[i]!.toLowerCase())) out.push(raw[i]!, raw[i + 1]!);
  return out;
}

function isCertificateError(code: string): boolean {
  return /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME|HOSTNAME|EXPIRED/.test(code);
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
