// Shared by proxy-http's tests: real origins on loopback, a proxy per test in a registry
// of its own, and clients that dial through core. Not part of the build.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { connect } from '@coproxy/core';
import type { Subscription } from 'rxjs';
import type { HttpExchange, HttpProxyEvent } from '../events.js';
import { type HttpProxy, type HttpProxyOptions, createHttpProxy } from '../proxy.js';

let nextId = 0;
/** A redirector id no other test (or test process) uses at the same time. */
export const uniqueId = (name: string): string => `${name}-${process.pid % 100000}-${++nextId}`;

export interface TempDir extends Disposable {
  readonly path: string;
}

/** A private directory (mode 0700, as a registry must be), removed on dispose. */
export function tempDir(prefix = 'coproxy-http-test-'): TempDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Resolves once `predicate` holds, polling briefly; rejects after `timeoutMs`. */
export async function until(predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** `promise`, or a rejection naming `what` once `timeoutMs` has passed. */
export function within<TValue>(promise: Promise<TValue>, timeoutMs: number, what: string): Promise<TValue> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Consumes a stream, keeping only its size and digest. */
export async function digestOf(stream: Readable): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of stream) {
    const buffer = chunk as Buffer;
    bytes += buffer.length;
    hash.update(buffer);
  }
  return { bytes, sha256: hash.digest('hex') };
}

export interface GeneratedBody {
  readonly size: number;
  /** Produces the bytes on demand (never holding more than one chunk). */
  readonly stream: Readable;
  /** The digest of what `stream` produced; only once it has ended. */
  sha256(): string;
}

/** `size` pseudo-random bytes made as they are read: one random block, each copy stamped with its index. */
export function generatedBody(size: number, chunkSize = 64 * 1024): GeneratedBody {
  const block = randomBytes(chunkSize);
  const hash = createHash('sha256');
  let produced = 0;
  let index = 0;
  let digest: string | undefined;
  const stream = new Readable({
    read() {
      if (produced >= size) {
        digest ??= hash.digest('hex');
        this.push(null);
        return;
      }
      const length = Math.min(chunkSize, size - produced);
      const chunk = Buffer.from(block.subarray(0, length));
      if (length >= 4) chunk.writeUInt32BE(index++ % 2 ** 32, 0);
      hash.update(chunk);
      produced += length;
      this.push(chunk);
    },
  });
  return {
    size,
    stream,
    sha256() {
      if (digest === undefined) throw new Error('the generated body has not been read to its end');
      return digest;
    },
  };
}

export interface ProxyUnderTest extends AsyncDisposable {
  readonly proxy: HttpProxy;
  readonly registry: string;
  /** Everything `exchanges$` and `events$` emitted so far. */
  readonly exchanges: HttpExchange[];
  readonly events: HttpProxyEvent[];
  /** The error `exchanges$` ended with, if it did (the redirector failed). */
  readonly failures: unknown[];
}

/**
 * A proxy with a unique id in a fresh registry, taking connections to `ports`, listening,
 * with its exchanges and events recorded. Disposing closes it and removes the registry.
 */
export async function startProxy(
  ports: readonly number[],
  options: Partial<Omit<HttpProxyOptions, 'match' | 'registry'>> = {},
): Promise<ProxyUnderTest> {
  const registry = tempDir('coproxy-http-registry-');
  const proxy = createHttpProxy({ id: uniqueId('http'), priority: 1, ...options, match: { ports: [...ports] }, registry: registry.path });
  const exchanges: HttpExchange[] = [];
  const events: HttpProxyEvent[] = [];
  const failures: unknown[] = [];
  const subscriptions: Subscription[] = [
    proxy.exchanges$.subscribe({ next: (exchange) => exchanges.push(exchange), error: (error: unknown) => failures.push(error) }),
    proxy.events$.subscribe((event) => events.push(event)),
  ];
  const dispose = async (): Promise<void> => {
    for (const subscription of subscriptions) subscription.unsubscribe();
    await proxy.close();
    registry[Symbol.dispose]();
  };
  try {
    await within(proxy.listening(), 5000, 'the proxy to listen');
  } catch (error) {
    await dispose();
    throw error;
  }
  return { proxy, registry: registry.path, exchanges, events, failures, [Symbol.asyncDispose]: dispose };
}

export interface HttpOrigin extends AsyncDisposable {
  readonly port: number;
  readonly server: http.Server;
  /** TCP connections the origin accepted, in order. */
  readonly connections: net.Socket[];
}

/** An HTTP origin on 127.0.0.1 and an ephemeral port. */
export async function startHttpOrigin(handler: http.RequestListener): Promise<HttpOrigin> {
  const server = http.createServer(handler);
  const connections: net.Socket[] = [];
  server.on('connection', (socket: net.Socket) => connections.push(socket));
  await listen(server);
  return {
    port: (server.address() as net.AddressInfo).port,
    server,
    connections,
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export interface TcpOrigin extends AsyncDisposable {
  readonly port: number;
  /** Connections the origin accepted. */
  readonly sockets: net.Socket[];
}

/** A raw TCP origin on 127.0.0.1; `onConnection` runs on each accepted socket. */
export async function startTcpOrigin(onConnection: (socket: net.Socket) => void): Promise<TcpOrigin> {
  const sockets: net.Socket[] = [];
  const server = net.createServer((socket) => {
    sockets.push(socket);
    socket.on('error', () => socket.destroy()); // a reset by the peer is what some tests cause
    onConnection(socket);
  });
  await listen(server);
  return {
    port: (server.address() as net.AddressInfo).port,
    sockets,
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A port on 127.0.0.1 that refuses connections and that no other test can take while it is held (core's testing helper). */
export { refusingPort } from '@coproxy/core/testing';

function listen(server: net.Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

export interface ClientResponse {
  readonly status: number;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: Buffer;
  /** The client connection had served a request before this one. */
  readonly reusedSocket: boolean;
}

export interface ClientRequest {
  readonly agent: http.Agent;
  readonly port: number;
  readonly method?: string;
  readonly path?: string;
  readonly headers?: http.OutgoingHttpHeaders;
  /** Sent with `end()`; a stream is piped. */
  readonly body?: Buffer | string | Readable;
  readonly timeoutMs?: number;
}

/** One request with a Node client on `agent`, the response body collected. */
export function request(options: ClientRequest): Promise<ClientResponse> {
  const done = new Promise<ClientResponse>((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: options.port, method: options.method ?? 'GET', path: options.path ?? '/', headers: options.headers ?? {}, agent: options.agent },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.once('error', reject);
        res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), reusedSocket: req.reusedSocket }));
      },
    );
    req.once('error', reject);
    if (options.body instanceof Readable) options.body.pipe(req);
    else req.end(options.body);
  });
  return within(done, options.timeoutMs ?? 10_000, `${options.method ?? 'GET'} ${options.path ?? '/'}`);
}

/** Opens a raw connection through core's redirect layer. */
export function dial(registry: string, port: number): Promise<net.Socket> {
  return within(connect({ host: '127.0.0.1', port, registry }), 5000, `a connection to port ${port}`);
}

/** Everything the peer sends until it ends or the socket closes. */
export function readAll(socket: net.Socket, timeoutMs = 10_000): Promise<Buffer> {
  const done = new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('close', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
  });
  return within(done, timeoutMs, 'the peer to close');
}

/** Reads until `predicate` holds for the bytes received so far. */
export function readUntil(socket: net.Socket, predicate: (received: Buffer) => boolean, timeoutMs = 5000): Promise<Buffer> {
  const done = new Promise<Buffer>((resolve, reject) => {
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk]);
      if (!predicate(received)) return;
      cleanup();
      resolve(received);
    };
    const onEnd = (): void => {
      cleanup();
      reject(new Error(`the peer closed after ${received.length} bytes: ${JSON.stringify(received.toString('latin1').slice(0, 200))}`));
    };
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onEnd);
    };
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onEnd);
  });
  return within(done, timeoutMs, 'bytes from the peer');
}

/** A one-shot request on a raw socket, `Connection: close`; resolves with the whole reply as text. */
export async function rawRequest(registry: string, port: number, bytes: string | Buffer): Promise<string> {
  const socket = await dial(registry, port);
  try {
    socket.write(bytes);
    return (await readAll(socket)).toString('latin1');
  } finally {
    socket.destroy();
  }
}
