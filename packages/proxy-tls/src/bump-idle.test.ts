import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { closed, dial, startProxy, tempDir, testCa, tlsClient, until } from './test-support/harness.js';
import { h2Client, startHttpsOrigin } from './test-support/h2-support.js';

/**
 * Adversarial: a bumped connection holds a client socket and a verified origin connection.
 * A client that goes quiet (after its h2 preface, or in its TLS handshake) must not hold
 * both for ever, or a few thousand such clients exhaust the vendor's descriptors for everyone.
 */
describe('bump: idle clients', () => {
  it('closes an h2 session that sends nothing after its preface, and the origin connection with it, after idleTimeoutMs', async () => {
    using originCa = await testCa('CN=idle origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, idleTimeoutMs: 300 });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);
    expect(client.socket.alpnProtocol).toBe('h2');

    await closed(client.socket, 10_000, 'the idle bumped h2 connection to close');
    await until(() => origin.taps[0]?.destroyed === true, 5000, 'the origin connection to close');
  });

  it('closes a bumped HTTP/1.1 connection that never sends a request after idleTimeoutMs', async () => {
    using originCa = await testCa('CN=idle origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, idleTimeoutMs: 300 });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });
    socket.on('error', () => undefined);

    await closed(socket, 10_000, 'the idle bumped h1 connection to close');
    await until(() => origin.taps[0]?.destroyed === true, 5000, 'the origin connection to close');
  });

  it('closes a client that sends its ClientHello and then nothing (a handshake never finished), and the origin connection with it', async () => {
    // A real ClientHello for shop.example, as Node's TLS client writes it.
    const hello = await new Promise<Buffer>((resolve, reject) => {
      const server = net.createServer((socket) => {
        socket.once('data', (chunk: Buffer) => {
          resolve(chunk);
          socket.destroy();
          server.close();
        });
      });
      server.listen(0, '127.0.0.1', () => {
        const client = tls.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', servername: 'shop.example', ALPNProtocols: ['h2'] });
        client.on('error', () => undefined);
      });
      server.on('error', reject);
    });
    using originCa = await testCa('CN=idle origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, idleTimeoutMs: 300 });
    const socket = await dial(proxy.registry, origin.port);
    socket.on('error', () => undefined);
    socket.resume();
    socket.write(hello);

    await until(() => origin.taps.length === 1, 5000, 'the origin to be dialled');
    await closed(socket, 10_000, 'the half-done handshake to be closed');
    await until(() => origin.taps[0]!.destroyed, 5000, 'the origin connection to close');
  });
});
