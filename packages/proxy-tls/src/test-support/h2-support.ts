import http from 'node:http';
import http2 from 'node:http2';
import type tls from 'node:tls';
import type { CertificateAuthority } from '../ca.js';
import { type TlsOrigin, startTlsOrigin, tlsClient, within } from './harness.js';

/** What an origin saw of one request, as it answers it. */
export interface SeenRequest {
  readonly protocol: 'h2' | 'http/1.1';
  readonly method: string;
  readonly path: string;
  /** `:authority` for h2, `Host` for HTTP/1.1. */
  readonly authority: string | undefined;
  readonly bytes: number;
  readonly headers: Record<string, string | string[] | undefined>;
}

export interface HttpsOrigin extends TlsOrigin {
  readonly requests: SeenRequest[];
  /** Requests to paths starting `/hold` wait for this many answers to be released (each call releases all waiting). */
  release(): void;
}

/** What an h2 origin answers a `/large…` request with: many DATA frames, and the client's WINDOW_UPDATEs for them. */
export const LARGE_BODY_BYTES = 8 * 1024 * 1024;

/**
 * An HTTPS origin speaking what `protocols` offer by ALPN (h2 through node:http2, HTTP/1.1
 * through node:http), answering every request with what it saw, as JSON. A request to
 * `/hold…` is answered only when the test calls `release()`; after answering `/last…` an
 * h2 origin closes that session; `/large…` is answered `LARGE_BODY_BYTES` (h2 only).
 */
export async function startHttpsOrigin(ca: CertificateAuthority, protocols: readonly ('h2' | 'http/1.1')[]): Promise<HttpsOrigin> {
  const requests: SeenRequest[] = [];
  let held: (() => void)[] = [];
  const answerWhenDue = (path: string, answer: () => void): void => {
    if (path.startsWith('/hold')) held.push(answer);
    else answer();
  };
  const h1 = http.createServer((req, res) => {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => {
      const seen: SeenRequest = { protocol: 'http/1.1', method: req.method ?? '', path: req.url ?? '', authority: req.headers.host, bytes, headers: req.headers };
      requests.push(seen);
      answerWhenDue(seen.path, () => res.writeHead(200, { 'content-type': 'application/json', 'x-origin': 'h1' }).end(JSON.stringify(seen)));
    });
  });
  const onH2Stream = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void => {
    stream.on('error', () => undefined);
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
    stream.on('end', () => {
      const seen: SeenRequest = { protocol: 'h2', method: headers[':method'] ?? '', path: headers[':path'] ?? '', authority: headers[':authority'], bytes, headers };
      requests.push(seen);
      answerWhenDue(seen.path, () => {
        if (stream.closed) return;
        // `/large…`: 8 MiB of body, many DATA frames (and the client's WINDOW_UPDATEs for them).
        if (seen.path.startsWith('/large')) {
          stream.respond({ ':status': 200 });
          return void stream.end(Buffer.alloc(LARGE_BODY_BYTES, 0x61));
        }
        stream.respond({ ':status': 200, 'content-type': 'application/json', 'x-origin': 'h2' });
        stream.end(JSON.stringify(seen));
        // `/last…`: the origin ends its session after this answer (GOAWAY), as servers do on a restart.
        if (seen.path.startsWith('/last')) stream.session?.close();
      });
    });
  };
  const origin = await startTlsOrigin({
    ca,
    ALPNProtocols: [...protocols],
    onSession: (socket: tls.TLSSocket) => {
      if (socket.alpnProtocol === 'h2') {
        const session = http2.performServerHandshake(socket);
        session.on('error', () => undefined);
        session.on('stream', onH2Stream);
      } else {
        h1.emit('connection', socket);
      }
    },
  });
  return Object.assign(origin, {
    requests,
    release() {
      const waiting = held;
      held = [];
      for (const answer of waiting) answer();
    },
  });
}

export interface H2Response {
  readonly status: number;
  readonly headers: http2.IncomingHttpHeaders;
  readonly body: string;
}

/** One request on an h2 session; resolves with the whole response, rejects on a stream error (a reset). */
export function h2Request(session: http2.ClientHttp2Session, headers: http2.OutgoingHttpHeaders, body?: Buffer): Promise<H2Response> {
  const done = new Promise<H2Response>((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined });
    let status = 0;
    let responseHeaders: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.once('response', (h) => {
      status = Number(h[':status']);
      responseHeaders = h;
    });
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('error', reject);
    stream.once('end', () => resolve({ status, headers: responseHeaders, body: Buffer.concat(chunks).toString() }));
    if (body !== undefined) stream.end(body);
  });
  return within(done, 15_000, `${String(headers[':method'] ?? 'GET')} ${String(headers[':path'])}`);
}

/** An h2 client session through the redirect layer to `port` (TLS with SNI `servername`, trusting `ca`), as an app on the embedded backend would open it. */
export async function h2Client(registry: string, port: number, servername: string, ca: string | Buffer): Promise<{ session: http2.ClientHttp2Session; socket: tls.TLSSocket } & AsyncDisposable> {
  const { socket } = await tlsClient(registry, port, { servername, ca, ALPNProtocols: ['h2', 'http/1.1'] });
  const session = http2.connect(`https://${servername}`, { createConnection: () => socket });
  session.on('error', () => undefined); // a test that expects a failure asserts on its streams
  return {
    session,
    socket,
    async [Symbol.asyncDispose]() {
      await new Promise<void>((resolve) => {
        if (session.closed || session.destroyed) return resolve();
        session.close(resolve);
        setTimeout(() => {
          session.destroy();
          resolve();
        }, 1000).unref();
      });
    },
  };
}
