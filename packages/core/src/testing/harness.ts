// Shared by the tests: real servers on loopback, started and stopped by each test.
import { createHash, createSecretKey, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Subscription } from 'rxjs';
import { relay } from '../net/relay.js';
import type { AcceptedConnection } from '../redirector/accepted-connection.js';
import type { Redirector } from '../redirector/redirector.js';

export interface SocketPair extends Disposable {
  /** The connecting side. */
  readonly near: net.Socket;
  /** The side the server accepted. */
  readonly far: net.Socket;
  /** Closes the server; the sockets stay. */
  close(): void;
}

/** A client socket and the server side of it, connected over loopback, both allowing half-open; disposing destroys both. */
export async function socketPair(): Promise<SocketPair> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const near = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  // Both listened for before either is awaited: nothing orders the client's 'connect'
  // before or after the server's 'connection', and a listener added after its event waits forever.
  const connected = new Promise((resolve) => near.once('connect', resolve));
  const far = await accepted;
  await connected;
  const close = (): void => void server.close();
  return {
    near,
    far,
    close,
    [Symbol.dispose]() {
      near.destroy();
      far.destroy();
      close();
    },
  };
}

/**
 * What a socket delivers until its end, as a count and a SHA-256. With `pauses`, the
 * reader stops after every `stopEvery` bytes for `stopForMs` (0: one turn of the event loop).
 */
export function digestOf(socket: net.Socket, pauses?: { stopEvery: number; stopForMs: number }): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let sinceStop = 0;
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      sinceStop += chunk.length;
      if (pauses !== undefined && sinceStop >= pauses.stopEvery) {
        sinceStop = 0;
        socket.pause();
        setTimeout(() => socket.resume(), pauses.stopForMs);
      }
    });
    socket.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.once('error', reject);
  });
}

export interface TempDir extends Disposable {
  readonly path: string;
}

export function tempRegistry(): TempDir {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-test-'));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A redirector's authentication key, read from its registry entry as the connector reads it. */
export function entryKey(registry: string, id: string): KeyObject {
  const entry = JSON.parse(fs.readFileSync(path.join(registry, `${id}.json`), 'utf8')) as { secret: string };
  return createSecretKey(Buffer.from(entry.secret, 'base64'));
}

export interface EchoOrigin extends AsyncDisposable {
  readonly port: number;
  /** Bytes each connection sent, by arrival order. */
  readonly received: Buffer[];
  /** TCP connections accepted so far, whether or not they sent anything. */
  readonly connections: number;
}

/** An origin that echoes every byte back and remembers what it got. */
export async function startEchoOrigin(host = '127.0.0.1'): Promise<EchoOrigin> {
  const received: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => received.push(Buffer.concat(chunks)));
    socket.on('error', () => socket.destroy());
    socket.on('close', () => sockets.delete(socket));
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    received,
    get connections() {
      return connections;
    },
    async [Symbol.asyncDispose]() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

export interface Acceptance {
  readonly redirectorId: string;
  readonly tag: string;
  readonly connection: AcceptedConnection;
}

/**
 * A minimal vendor: reads the flow's tag line (`FLOW <tag>\n`) so the test knows which
 * flow it saw, opens the onward leg, and relays bytes both ways.
 */
export function passThrough(
  redirector: Redirector,
  log: Acceptance[],
  options: { propagateRecords?: boolean; onAccept?: (acceptance: Acceptance) => boolean } = {},
): Subscription {
  return redirector.accepted$.subscribe((connection) => {
    void inspect(connection);
  });

  async function inspect(connection: AcceptedConnection): Promise<void> {
    const { socket } = connection;
    const head = await readLine(socket);
    const acceptance = { redirectorId: redirector.id, tag: head.line.replace(/^FLOW /, ''), connection };
    log.push(acceptance);
    if (options.onAccept?.(acceptance) === false) {
      socket.destroy();
      return;
    }
    let upstream: net.Socket;
    try {
      upstream = await connection.connectOnward({ propagateRecords: options.propagateRecords ?? true });
    } catch {
      socket.destroy();
      return;
    }
    upstream.write(head.bytes);
    void relay(socket, upstream);
  }
}

/** Reads through the first newline; returns the line and every byte read so far. */
export function readLine(socket: net.Socket): Promise<{ line: string; bytes: Buffer }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      const bytes = Buffer.concat(chunks);
      const newline = bytes.indexOf(0x0a);
      if (newline < 0) return;
      socket.pause();
      socket.off('data', onData);
      socket.off('end', onEnd);
      resolve({ line: bytes.subarray(0, newline).toString(), bytes });
    };
    const onEnd = (): void => reject(new Error('ended before a newline'));
    socket.on('data', onData);
    socket.once('end', onEnd);
  });
}

/** Sends `payload` after the tag line, half-closes, and collects the whole reply. */
export async function exchange(socket: net.Socket, tag: string, payload: Buffer): Promise<Buffer> {
  const reply: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => reply.push(chunk));
    socket.once('end', resolve);
    socket.once('error', reject);
  });
  socket.write(`FLOW ${tag}\n`);
  socket.end(payload);
  await done;
  return Buffer.concat(reply);
}

export const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Resolves once `predicate` holds, polling briefly; rejects after `timeoutMs`. */
export async function until(predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
