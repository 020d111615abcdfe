// Shared by proxy-tls's functional tests: a proxy per test in a registry of its own,
// origins on 127.0.0.1 and ephemeral ports (certificates from a CA the test makes), and
// clients that dial through core's connect(). Not part of the build.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import tls from 'node:tls';
import { connect } from '@coproxy/core';
import type { Subscription } from 'rxjs';
import { CertificateAuthority } from '../ca.js';
import type { Handshake, TlsExchange, TlsProxyEvent } from '../events.js';
import type { TlsProxyOptions } from '../options.js';
import { type TlsProxy, createTlsProxy } from '../proxy.js';

let nextId = 0;
/** A redirector id no other test (or test process) uses at the same time. */
export const uniqueId = (name: string): string => `${name}-${process.pid % 100000}-${++nextId}`;

export interface TempDir extends Disposable {
  readonly path: string;
}

/** A private directory (mode 0700, as a registry must be), removed on dispose. */
export function tempDir(prefix = 'coproxy-tls-test-'): TempDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Resolves once `predicate` holds, polling briefly; rejects after `timeoutMs`. */
export async function until(predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
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

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** A TLS alert record as the proxy sends it before any key exchange: fatal, with `description`. */
export const alertBytes = (description: number): Buffer => Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]);

// ---------------------------------------------------------------------------------------------
// The proxy

export interface ProxyUnderTest extends AsyncDisposable {
  readonly proxy: TlsProxy;
  readonly id: string;
  readonly registry: string;
  /** Everything the proxy's streams emitted so far. */
  readonly handshakes: Handshake[];
  readonly exchanges: TlsExchange[];
  readonly events: TlsProxyEvent[];
  /** The error `handshakes$` ended with, if it did (the redirector failed). */
  readonly failures: unknown[];
  /** Events of one type, typed. */
  eventsOf<TType extends TlsProxyEvent['type']>(type: TType): Extract<TlsProxyEvent, { type: TType }>[];
}

/**
 * A TLS proxy with a unique id in a fresh registry, taking connections to `ports`,
 * listening, with everything it emits recorded. Disposing closes it and removes the registry.
 */
export async function startProxy(
  ports: readonly number[],
  options: Partial<Omit<TlsProxyOptions, 'match' | 'registry' | 'id'>> = {},
): Promise<ProxyUnderTest> {
  const registry = tempDir('coproxy-tls-registry-');
  const id = uniqueId('tls');
  let proxy: TlsProxy;
  try {
    proxy = createTlsProxy({ id, priority: 1, ...options, match: { ports: [...ports] }, registry: registry.path });
  } catch (error) {
    registry[Symbol.dispose]();
    throw error;
  }
  const handshakes: Handshake[] = [];
  const exchanges: TlsExchange[] = [];
  const events: TlsProxyEvent[] = [];
  const failures: unknown[] = [];
  const subscriptions: Subscription[] = [
    proxy.handshakes$.subscribe({ next: (handshake) => handshakes.push(handshake), error: (error: unknown) => failures.push(error) }),
    proxy.exchanges$.subscribe((exchange) => exchanges.push(exchange)),
    proxy.events$.subscribe((event) => events.push(event)),
  ];
  const dispose = async (): Promise<void> => {
    for (const subscription of subscriptions) subscription.unsubscribe();
    await proxy.close();
    registry[Symbol.dispose]();
  };
  try {
    await within(proxy.listening(), 10_000, 'the proxy to listen');
  } catch (error) {
    await dispose();
    throw error;
  }
  return {
    proxy,
    id,
    registry: registry.path,
    handshakes,
    exchanges,
    events,
    failures,
    eventsOf: <TType extends TlsProxyEvent['type']>(type: TType) => events.filter((event): event is Extract<TlsProxyEvent, { type: TType }> => event.type === type),
    [Symbol.asyncDispose]: dispose,
  };
}

// ---------------------------------------------------------------------------------------------
// Byte taps: what went over a TCP connection, below TLS

/** A running digest of a byte stream, with its first bytes kept. */
export class ByteLog {
  private readonly hash = createHash('sha256');
  private readonly firstChunks: Buffer[] = [];
  private kept = 0;
  bytes = 0;

  constructor(private readonly keep = 64 * 1024) {}

  add(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    if (this.kept < this.keep) {
      const part = chunk.subarray(0, this.keep - this.kept);
      this.firstChunks.push(Buffer.from(part));
      this.kept += part.length;
    }
  }

  /** The first bytes (up to `keep`). */
  head(): Buffer {
    return Buffer.concat(this.firstChunks);
  }

  /** The digest so far; call once the stream is over. */
  digest(): string {
    return this.hash.copy().digest('hex');
  }
}

/**
 * A Duplex over a TCP socket that logs every byte each way, so that TLS can run over it
 * (`tls.connect({ socket: tap })`, or a server's 'connection') while the test sees the
 * TLS records on the wire.
 */
export class Tap extends Duplex {
  readonly sent = new ByteLog();
  readonly received = new ByteLog();

  constructor(readonly socket: net.Socket) {
    super({ allowHalfOpen: false });
    socket.on('data', (chunk: Buffer) => {
      this.received.add(chunk);
      if (!this.push(chunk)) socket.pause();
    });
    socket.once('end', () => this.push(null));
    socket.once('error', (error) => this.destroy(error));
    socket.once('close', () => this.destroy());
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.sent.add(chunk);
    this.socket.write(chunk, callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.socket.end(callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy(error ?? undefined);
    callback(error);
  }
}

/** Resolves when `stream` has closed (whatever the reason). */
export function closed(stream: Duplex, timeoutMs = 10_000, what = 'the stream to close'): Promise<void> {
  if (stream.closed || stream.destroyed) return Promise.resolve();
  return within(new Promise<void>((resolve) => stream.once('close', () => resolve())), timeoutMs, what);
}

// ---------------------------------------------------------------------------------------------
// Origins

interface Listening extends AsyncDisposable {
  readonly port: number;
}

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

export interface TcpOrigin extends Listening {
  /** Connections the origin accepted, in order. */
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
  const port = await listen(server);
  return {
    port,
    sockets,
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** An origin that sends back what it receives. */
export const startEchoOrigin = (): Promise<TcpOrigin> => startTcpOrigin((socket) => socket.pipe(socket));

export interface TlsOrigin extends Listening {
  /** One tap per TCP connection the origin accepted: the TLS records as they crossed the wire. */
  readonly taps: Tap[];
  /** TLS sessions that completed the handshake. */
  readonly sessions: tls.TLSSocket[];
}

export interface TlsOriginOptions {
  /** The CA that mints the origin's certificate. */
  readonly ca: CertificateAuthority;
  /** The name on the certificate whatever the client asks for; default the client's SNI. */
  readonly certificateName?: string;
  readonly ALPNProtocols?: string[];
  /** Runs on each session once its handshake completed. */
  readonly onSession?: (socket: tls.TLSSocket) => void;
  /** An HTTP/1.1 server to hand each TLS session to (as https would). */
  readonly http?: http.Server;
}

/**
 * A TLS origin on 127.0.0.1 whose certificate for each SNI name comes from `ca` (clients
 * must send SNI: without it there is no certificate to present). Every TCP connection is tapped below TLS, so a test can compare the
 * TLS records the origin received with those the client sent.
 */
export async function startTlsOrigin(options: TlsOriginOptions): Promise<TlsOrigin> {
  const taps: Tap[] = [];
  const sessions: tls.TLSSocket[] = [];
  const tlsServer = tls.createServer({
    SNICallback: (name, callback) => {
      options.ca.contextFor(options.certificateName ?? name).then(
        (context) => callback(null, context),
        (error: Error) => callback(error, undefined),
      );
    },
    ...(options.ALPNProtocols !== undefined && { ALPNProtocols: options.ALPNProtocols }),
  });
  tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
    sessions.push(socket);
    socket.on('error', () => socket.destroy()); // clients that give up mid-session are part of some tests
    if (options.http !== undefined) options.http.emit('connection', socket);
    else options.onSession?.(socket);
  });
  tlsServer.on('tlsClientError', () => undefined); // a client that refuses our certificate: the test asserts on its side
  const server = net.createServer((socket) => {
    socket.on('error', () => socket.destroy());
    const tap = new Tap(socket);
    taps.push(tap);
    tap.on('error', () => tap.destroy());
    tlsServer.emit('connection', tap);
  });
  const port = await listen(server);
  return {
    port,
    taps,
    sessions,
    async [Symbol.asyncDispose]() {
      for (const tap of taps) tap.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A test CA in a directory of its own, removed on dispose. */
export async function testCa(subject: string, cacheSize?: number): Promise<CertificateAuthority & Disposable> {
  const dir = tempDir('coproxy-tls-ca-');
  const ca = await CertificateAuthority.open({ dir: dir.path, subject, ...(cacheSize !== undefined && { cacheSize }) });
  return Object.assign(ca, { [Symbol.dispose]: () => dir[Symbol.dispose]() });
}

// ---------------------------------------------------------------------------------------------
// Clients

/** Opens a raw connection through core's redirect layer, as an app would. */
export function dial(registry: string, port: number): Promise<net.Socket> {
  return within(connect({ host: '127.0.0.1', port, registry }), 5000, `a connection to port ${port}`);
}

/** Everything the peer sends until the connection ends, however it ends (a reset included: `error` says so). */
export function readToEnd(socket: net.Socket, timeoutMs = 10_000): Promise<{ bytes: Buffer; error: NodeJS.ErrnoException | undefined }> {
  const done = new Promise<{ bytes: Buffer; error: NodeJS.ErrnoException | undefined }>((resolve) => {
    const chunks: Buffer[] = [];
    let error: NodeJS.ErrnoException | undefined;
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('error', (e: NodeJS.ErrnoException) => (error = e));
    socket.once('close', () => resolve({ bytes: Buffer.concat(chunks), error }));
  });
  return within(done, timeoutMs, 'the peer to close');
}

export interface TlsClientResult {
  readonly socket: tls.TLSSocket;
  readonly tap: Tap;
}

/**
 * A Node TLS client through the redirect layer, its TCP bytes tapped. Resolves once the
 * handshake completed; rejects with the TLS error otherwise.
 */
export async function tlsClient(registry: string, port: number, options: tls.ConnectionOptions): Promise<TlsClientResult> {
  const tap = new Tap(await dial(registry, port));
  const socket = tls.connect({ ...options, socket: tap });
  const connected = new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => {
      socket.off('error', reject);
      resolve();
    });
    socket.once('error', reject);
  });
  try {
    await within(connected, 10_000, 'the TLS handshake');
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return { socket, tap };
}

/** The error a TLS client through the redirect layer fails with (the test fails if it connects). */
export async function tlsClientError(registry: string, port: number, options: tls.ConnectionOptions): Promise<NodeJS.ErrnoException & { socket: tls.TLSSocket }> {
  const tap = new Tap(await dial(registry, port));
  const socket = tls.connect({ ...options, socket: tap });
  const outcome = new Promise<NodeJS.ErrnoException>((resolve, reject) => {
    socket.once('secureConnect', () => reject(new Error('the TLS handshake succeeded')));
    socket.once('error', resolve);
  });
  try {
    const error = await within(outcome, 10_000, 'the TLS handshake to fail');
    return Object.assign(error, { socket });
  } finally {
    socket.destroy();
  }
}

export const randomPayload = (size: number): Buffer => randomBytes(size);

/** Reads until `length` bytes have arrived; rejects if the stream ends first. */
export function readExactly(stream: Duplex, length: number, timeoutMs = 20_000): Promise<Buffer> {
  const done = new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      have += chunk.length;
      if (have < length) return;
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onEnd = (): void => {
      cleanup();
      reject(new Error(`the stream ended after ${have} of ${length} bytes`));
    };
    const cleanup = (): void => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onEnd);
    };
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onEnd);
  });
  return within(done, timeoutMs, `${length} bytes`);
}

/** Writes `pieces` one after another, each in its own turn of the event loop (separate TCP segments, usually). */
export async function writeApart(socket: net.Socket, pieces: readonly Buffer[]): Promise<void> {
  for (const piece of pieces) {
    await new Promise<void>((resolve, reject) => socket.write(piece, (error) => (error ? reject(error) : resolve())));
    await new Promise((resolve) => setImmediate(resolve));
  }
}
