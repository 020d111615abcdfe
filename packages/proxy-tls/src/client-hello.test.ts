import net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { parseClientHello } from './client-hello.js';

/** The bytes Node's own TLS client sends first, captured on a plain TCP listener. */
async function captureHello(options: tls.ConnectionOptions): Promise<Buffer> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const received = new Promise<Buffer>((resolve) => {
      server.once('connection', (socket) => {
        let bytes = Buffer.alloc(0);
        socket.on('data', (chunk: Buffer) => {
          bytes = Buffer.concat([bytes, chunk]);
          const result = parseClientHello(bytes);
          if (result.done) {
            resolve(bytes.subarray(0, result.consumed));
            socket.destroy();
          }
        });
      });
    });
    const client = tls.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, ...options });
    client.on('error', () => client.destroy()); // the listener hangs up mid-handshake, by design
    return await received;
  } finally {
    server.close();
  }
}

describe('parseClientHello on a real client', () => {
  it('reads SNI, ALPN and TLS 1.3 from Node’s ClientHello, and asks for more when it is cut short', async () => {
    const bytes = await captureHello({ servername: 'example.com', ALPNProtocols: ['h2', 'http/1.1'] });
    const result = parseClientHello(bytes);
    expect(result.done).toBe(true);
    if (!result.done) return;
    expect(result.hello.serverName).toBe('example.com');
    expect(result.hello.alpn).toEqual(['h2', 'http/1.1']);
    expect(result.hello.supportedVersions).toContain(0x0304);
    expect(result.consumed).toBe(bytes.length);
    for (const cut of [1, 5, 6, bytes.length - 1]) {
      expect(parseClientHello(bytes.subarray(0, cut))).toMatchObject({ done: false });
    }
  });
});
