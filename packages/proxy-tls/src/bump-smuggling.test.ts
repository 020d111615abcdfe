import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import type { Inspector } from '@coproxy/core/vendor';
import { describe, expect, it } from 'vitest';
import { startProxy, startTlsOrigin, tempDir, testCa, tlsClient, until, within } from './test-support/harness.js';
import { FrameReader, FrameType, PREFACE, headers, hpack, settings, settingsAck } from './test-support/h2-frames.js';
import { h2Client, h2Request, startHttpsOrigin } from './test-support/h2-support.js';

/**
 * Adversarial: a request body that bump forwards to an HTTP/1.1 origin without framing is
 * read by the origin as further requests, which no inspector saw (I6).
 */

/** An HTTP/1.1 origin that records every decrypted byte it received and answers each head `200 ok`. */
async function startRawH1Origin(ca: Parameters<typeof startTlsOrigin>[0]['ca']) {
  const received: Buffer[] = [];
  const origin = await startTlsOrigin({
    ca,
    ALPNProtocols: ['http/1.1'],
    onSession: (socket: tls.TLSSocket) => {
      let seen = '';
      socket.on('data', (chunk: Buffer) => {
        received.push(chunk);
        seen += chunk.toString('latin1');
        while (seen.includes('\r\n\r\n')) {
          seen = seen.slice(seen.indexOf('\r\n\r\n') + 4);
          socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok');
        }
      });
    },
  });
  return Object.assign(origin, { text: () => Buffer.concat(received).toString('latin1') });
}

const noAdmin: Inspector = {
  name: 'no-admin',
  inspectRequest: (request) => (request.paths.some((p) => p.startsWith('/admin')) ? { action: 'block', status: 403, reason: 'no admin' } : undefined),
};

const smuggled = 'GET /admin HTTP/1.1\r\nHost: shop.example\r\n\r\n';

describe('bump: request bodies the origin could read as requests', () => {
  it('never lets an h2 GET body reach an HTTP/1.1 origin as an uninspected request', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    // A GET with DATA and no content-length: legal HTTP/2.
    await h2Request(client.session, { ':method': 'GET', ':path': '/', ':authority': 'shop.example', ':scheme': 'https' }, Buffer.from(smuggled)).catch(() => undefined);
    await until(() => proxy.exchanges.length === 1, 5000, 'the exchange');
    // Give the origin a moment to read anything that was sent after the head.
    await new Promise((resolve) => setTimeout(resolve, 300));

    // The origin saw one request, with the bytes as its body, and no /admin.
    await until(() => origin.requests.length >= 1, 5000, 'the origin to answer');
    expect(origin.requests.map((r) => [r.method, r.path, r.bytes])).toEqual([['GET', '/', Buffer.byteLength(smuggled)]]);
  });

  it('never lets an HTTP/1.1 chunked GET body reach an HTTP/1.1 origin unframed', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });
    const body = Buffer.from(smuggled);
    socket.write(`GET / HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`);
    await within(
      new Promise<void>((resolve) => {
        let text = '';
        socket.on('data', (chunk: Buffer) => {
          text += chunk.toString('latin1');
          if (text.includes('\r\n\r\n')) resolve();
        });
        socket.once('close', () => resolve());
      }),
      10_000,
      'an answer',
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    socket.destroy();

    // The origin saw one request, with the bytes as its body, and no /admin.
    await until(() => origin.requests.length >= 1, 5000, 'the origin to answer');
    expect(origin.requests.map((r) => [r.method, r.path, r.bytes])).toEqual([['GET', '/', Buffer.byteLength(smuggled)]]);
  });

  it('judges an h2 path as the origin reads it: /%61dmin and //admin are /admin', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startRawH1Origin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const statuses = [];
    for (const p of ['/%61dmin', '//admin', '/x/../admin', '/./admin']) {
      statuses.push((await h2Request(client.session, { ':method': 'GET', ':path': p, ':authority': 'shop.example', ':scheme': 'https' })).status);
    }

    expect(statuses).toEqual([403, 403, 403, 403]);
    expect(origin.text()).toBe('');
  });

  it('refuses an :authority or Host the origin connection is not for: a rule on the host cannot be dodged by naming another', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    // The origin's certificate names only the SNI the client gave (shop.example).
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    const noShop: Inspector = { name: 'no-shop', inspectRequest: (request) => (request.host === 'shop.example' ? { action: 'block', status: 403 } : undefined) };
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noShop] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    // The TLS connection goes to shop.example's server (its certificate verified), the rule is told allowed.example.
    const answer = await h2Request(client.session, { ':method': 'GET', ':path': '/exfil', ':authority': 'allowed.example', ':scheme': 'https' });

    expect(answer.status).toBe(421);
    expect(origin.requests).toEqual([]);
  });

  it('never forwards bytes after an HTTP/1.1 Upgrade request uninspected', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startRawH1Origin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });
    socket.on('error', () => undefined);
    socket.write(`GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n${smuggled}`);
    await new Promise((resolve) => setTimeout(resolve, 800));
    socket.destroy();

    expect(origin.text()).not.toContain('GET /admin');
  });

  it('never turns h2 header fields HTTP/1.1 would reframe (CR, LF, NUL, upper case, pseudo-headers out of place) into an HTTP/1.1 request', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startRawH1Origin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa, ALPNProtocols: ['h2'] });
    socket.on('error', () => undefined);
    const reader = new FrameReader(socket);
    socket.write(Buffer.concat([PREFACE, settings()]));
    await until(() => reader.of(FrameType.SETTINGS).some((f) => f.flags === 0), 5000, 'the proxy’s SETTINGS');
    socket.write(settingsAck());
    const base = hpack.request('shop.example', '/ok');
    const tricks = [
      hpack.literal('x-a', `v\r\n\r\n${smuggled}`),
      hpack.literal('x-b', `v\nHost: evil.example`),
      hpack.literal('x-c', 'v\u0000x'),
      hpack.literal('X-Upper', 'v'),
      hpack.literal('x-d\r\nx-e', 'v'),
      Buffer.concat([hpack.literal('x-f', 'v'), hpack.literalIndexedName(4, '/admin')]), // a :path after a regular field
      hpack.literalIndexedName(4, '/admin'), // a second :path
      hpack.literal('transfer-encoding', 'chunked'),
      hpack.literal('connection', 'close'),
      hpack.literal('content-length', '50'), // and END_STREAM on the HEADERS: a length no DATA will fill
    ];
    socket.write(Buffer.concat(tricks.map((trick, i) => headers(2 * i + 1, Buffer.concat([base, trick])))));
    // A plain request after them: the session still serves, so what the origin lacks was refused, not lost.
    socket.write(headers(2 * tricks.length + 1, hpack.request('shop.example', '/control')));
    await until(() => origin.text().includes('GET /control '), 5000, 'the control request at the origin');
    await new Promise((resolve) => setTimeout(resolve, 300));
    socket.destroy();

    const text = origin.text();
    expect(text).not.toContain('/admin');
    expect(text).not.toContain('evil.example');
    expect(text).not.toMatch(/x-[a-f]/i);
    expect(text).not.toContain('content-length: 50');
  });

  it('judges a request without a Host (HTTP/1.0) on the host the origin is sent', async () => {
    using originCa = await testCa('CN=smuggling origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    const noShop: Inspector = { name: 'no-shop', inspectRequest: (request) => (request.host === 'shop.example' ? { action: 'block', status: 403 } : undefined) };
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noShop] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });
    socket.on('error', () => undefined);
    let reply = '';
    socket.on('data', (chunk: Buffer) => (reply += chunk.toString('latin1')));
    socket.write('GET /no-host HTTP/1.0\r\n\r\n');
    await until(() => reply.includes('\r\n\r\n'), 5000, 'an answer');
    socket.destroy();

    expect(reply).toMatch(/^HTTP\/1\.[01] 403 /);
    expect(origin.requests).toEqual([]);
  });
});
