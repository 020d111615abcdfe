// Real ClientHellos, as real clients send them: a plain TCP listener on loopback reads
// the first flight until the parser has a whole hello, then hangs up. Not part of the build.
import { execFile } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { parseClientHello } from '../client-hello.js';

/** A listener that resolves with the first connection's ClientHello bytes (exactly its TLS records). */
async function helloListener(): Promise<{ port: number; hello: Promise<Buffer>; close(): void }> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const hello = new Promise<Buffer>((resolve, reject) => {
    server.once('connection', (socket) => {
      let bytes = Buffer.alloc(0);
      socket.on('error', reject);
      socket.on('data', (chunk: Buffer) => {
        bytes = Buffer.concat([bytes, chunk]);
        try {
          const result = parseClientHello(bytes);
          if (!result.done) return;
          resolve(bytes.subarray(0, result.consumed));
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
        socket.destroy();
      });
    });
  });
  return { port: (server.address() as net.AddressInfo).port, hello, close: () => server.close() };
}

function within<TValue>(promise: Promise<TValue>, timeoutMs: number, what: string): Promise<TValue> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The bytes Node's own TLS client sends first. */
export async function captureNodeHello(options: tls.ConnectionOptions): Promise<Buffer> {
  const listener = await helloListener();
  const client = tls.connect({ host: '127.0.0.1', port: listener.port, ...options });
  // The listener hangs up mid-handshake, by design: the client's error says only that.
  client.on('error', () => client.destroy());
  try {
    return await within(listener.hello, 5000, "Node's ClientHello");
  } finally {
    client.destroy();
    listener.close();
  }
}

/** The bytes curl sends first to https://<name>:<port>/ (resolved to the listener). */
export async function captureCurlHello(name: string): Promise<Buffer> {
  const listener = await helloListener();
  // curl fails once the listener hangs up; only its first flight matters. `timeout` kills it if it lingers.
  const curl = execFile('curl', ['-sk', '--max-time', '5', '--resolve', `${name}:${listener.port}:127.0.0.1`, `https://${name}:${listener.port}/`], {
    timeout: 10_000,
  });
  const failed = new Promise<never>((_resolve, reject) => curl.once('error', (error) => reject(new Error(`curl could not run: ${error.message}`))));
  try {
    return await within(Promise.race([listener.hello, failed]), 10_000, "curl's ClientHello");
  } finally {
    curl.kill();
    listener.close();
  }
}
