import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { createHttpsAgent } from '@coproxy/core';
import type { Inspector } from '@coproxy/core/vendor';
import { describe, expect, it } from 'vitest';
import { startProxy, tempDir, testCa, until, within } from './test-support/harness.js';
import { type SeenRequest, h2Client, h2Request, startHttpsOrigin } from './test-support/h2-support.js';

const get = (p: string, extra: Record<string, string> = {}) => ({ ':method': 'GET', ':path': p, ':authority': 'shop.example', ':scheme': 'https', ...extra });

/** An HTTP/1.1 client through the redirect layer (no ALPN offered, as Node's https does). */
function h1Request(registry: string, port: number, ca: Buffer, p: string): Promise<{ status: number; body: string }> {
  const agent = createHttpsAgent({ registry, keepAlive: false });
  const done = new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, servername: 'shop.example', ca, agent, path: p, headers: { host: 'shop.example' } }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.once('error', reject);
    req.end();
  });
  return within(done, 15_000, `GET ${p} over HTTP/1.1`).finally(() => agent.destroy());
}

describe('bump over HTTP/2', () => {
  it('speaks h2 to a client that offers it and to an origin that chooses it, streams side by side on one connection each way', async () => {
    using originCa = await testCa('CN=h2 origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2', 'http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const [post, first, second] = await Promise.all([
      h2Request(client.session, { ...get('/cart?id=7'), ':method': 'POST' }, Buffer.alloc(1000, 1)),
      h2Request(client.session, get('/a')),
      h2Request(client.session, get('/b')),
    ]);

    expect(client.socket.alpnProtocol).toBe('h2');
    expect(client.socket.getPeerCertificate().issuer.CN).toBe('coproxy-tls local CA');
    expect([post.status, first.status, second.status]).toEqual([200, 200, 200]);
    expect(JSON.parse(post.body)).toMatchObject({ protocol: 'h2', method: 'POST', path: '/cart?id=7', authority: 'shop.example', bytes: 1000 });
    expect(post.headers['x-origin']).toBe('h2');
    // One TLS connection to the origin carried the three streams.
    expect(origin.taps.length).toBe(1);
    await until(() => proxy.exchanges.length === 3, 5000, 'three exchanges');
    expect(proxy.exchanges.map((x) => x.request.url).sort()).toEqual(['/a', '/b', '/cart?id=7']);
    for (const x of proxy.exchanges) expect(x).toMatchObject({ sni: 'shop.example', protocols: { client: 'h2', origin: 'h2' }, response: { status: 200 } });
    expect(proxy.exchanges.find((x) => x.request.method === 'POST')?.request.bodyBytes).toBe(1000);
    // The client's session closed: the bumped connection and the origin's close with it.
    await client[Symbol.asyncDispose]();
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the bumped connection to close');
    await until(() => origin.taps[0]!.destroyed, 5000, 'the origin connection to close');
  });

  it('closes a bumped h2 connection whose client hangs up without GOAWAY (a bare FIN, as curl does), and the origin’s with it', async () => {
    using originCa = await testCa('CN=h2 origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);
    expect((await h2Request(client.session, get('/once'))).status).toBe(200);

    client.socket.end();

    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the bumped connection to close');
    await until(() => origin.taps[0]!.destroyed, 5000, 'the origin connection to close');
  });

  it('dials a new origin session when the origin ends its own, and forwards the next request’s whole body over it', async () => {
    using originCa = await testCa('CN=h2 origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const last = await h2Request(client.session, get('/last'));
    await until(() => origin.taps[0]!.destroyed, 5000, 'the origin to close its session');
    const after = await h2Request(client.session, { ...get('/after'), ':method': 'POST' }, Buffer.alloc(50_000, 3));

    expect([last.status, after.status]).toEqual([200, 200]);
    expect(JSON.parse(after.body)).toMatchObject({ protocol: 'h2', path: '/after', bytes: 50_000 });
    expect(origin.taps.length).toBe(2);
    await until(() => proxy.exchanges.length === 2, 5000, 'two exchanges');
    expect(proxy.exchanges[1]?.request.bodyBytes).toBe(50_000);
  });

  it('converts an h2 client’s streams into HTTP/1.1 requests for an origin that speaks only HTTP/1.1', async () => {
    using originCa = await testCa('CN=h1 origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const post = await h2Request(client.session, { ...get('/upload'), ':method': 'POST', 'x-kept': 'yes' }, Buffer.alloc(3000, 2));
    const next = await h2Request(client.session, get('/next'));

    expect(client.socket.alpnProtocol).toBe('h2');
    expect(post.status).toBe(200);
    const seen = JSON.parse(post.body) as SeenRequest;
    expect(seen).toMatchObject({ protocol: 'http/1.1', method: 'POST', path: '/upload', authority: 'shop.example', bytes: 3000 });
    expect(seen.headers['x-kept']).toBe('yes');
    expect(JSON.parse(next.body)).toMatchObject({ protocol: 'http/1.1', path: '/next', authority: 'shop.example' });
    expect(post.headers['x-origin']).toBe('h1');
    await until(() => proxy.exchanges.length === 2, 5000, 'two exchanges');
    expect(proxy.exchanges.map((x) => x.protocols)).toEqual([
      { client: 'h2', origin: 'http/1.1' },
      { client: 'h2', origin: 'http/1.1' },
    ]);
  });

  it('converts an HTTP/1.1 client’s requests into h2 streams for an origin that chooses h2', async () => {
    using originCa = await testCa('CN=h2 origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));

    const response = await h1Request(proxy.registry, origin.port, proxyCa, '/page?x=1');

    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toMatchObject({ protocol: 'h2', method: 'GET', path: '/page?x=1', authority: 'shop.example' });
    await until(() => proxy.exchanges.length === 1, 5000, 'the exchange');
    expect(proxy.exchanges[0]).toMatchObject({ protocols: { client: 'http/1.1', origin: 'h2' }, response: { status: 200 } });
  });

  it('runs one inspector on every stream and every HTTP/1.1 request: a blocked one is answered on its own stream, its siblings carry on', async () => {
    using originCa = await testCa('CN=inspected origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2', 'http/1.1']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    const seen: string[] = [];
    // Written once against core's contract: coproxy-http runs the same object.
    const noAdmin: Inspector = {
      name: 'no-admin',
      inspectRequest: (request) => {
        seen.push(`${request.httpVersion} ${request.method} ${request.host ?? '-'} ${request.path}`);
        if (request.paths.some((p) => p.startsWith('/admin'))) return { action: 'block', status: 403, reason: 'no admin here' };
        return { action: 'annotate', headers: { 'X-Inspected': 'yes' } };
      },
    };
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [noAdmin] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const [before, admin, after] = await Promise.all([h2Request(client.session, get('/hold-a')), h2Request(client.session, get('/admin/users')), h2Request(client.session, get('/b')), until(() => origin.requests.length === 2, 5000, 'the allowed streams at the origin').then(() => origin.release())]);
    const h1Admin = await h1Request(proxy.registry, origin.port, proxyCa, '/admin');

    expect(admin).toMatchObject({ status: 403, body: 'no admin here\n' });
    expect(h1Admin).toEqual({ status: 403, body: 'no admin here\n' });
    expect([before.status, after.status]).toEqual([200, 200]);
    expect(origin.requests.map((r) => r.path).sort()).toEqual(['/b', '/hold-a']);
    for (const r of origin.requests) expect(r.headers['x-inspected']).toBe('yes');
    expect(seen.sort()).toEqual(['1.1 GET shop.example /admin', '2.0 GET shop.example /admin/users', '2.0 GET shop.example /b', '2.0 GET shop.example /hold-a']);
    // The session survived the block: another stream on it still works.
    expect((await h2Request(client.session, get('/c'))).status).toBe(200);
    await until(() => proxy.exchanges.length === 5, 5000, 'five exchanges');
    const blocked = proxy.exchanges.filter((x) => x.decision?.action === 'block');
    expect(blocked.length).toBe(2);
    expect(blocked[0]).toMatchObject({ request: { url: '/admin/users' }, response: { status: 403, bodyBytes: 0 }, decision: { action: 'block', status: 403, reason: 'no admin here', by: ['no-admin'] } });
    expect(blocked[1]).toMatchObject({ request: { url: '/admin' }, protocols: { client: 'http/1.1', origin: 'h2' } });
  });

  it('answers 502 on the one stream whose inspector throws, and serves the next', async () => {
    using originCa = await testCa('CN=throwing origin CA');
    await using origin = await startHttpsOrigin(originCa, ['h2']);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    const fragile: Inspector = {
      name: 'fragile',
      inspectRequest: (request) => {
        if (request.path === '/boom') throw new Error('inspector bug');
        return undefined;
      },
    };
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [fragile] });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

    const boom = await h2Request(client.session, get('/boom'));
    const fine = await h2Request(client.session, get('/fine'));

    expect(boom.status).toBe(502);
    expect(boom.body).toBe('502 Bad Gateway: COPROXY_TLS_INSPECTOR_FAILED\n');
    expect(fine.status).toBe(200);
    expect(origin.requests.map((r) => r.path)).toEqual(['/fine']);
    await until(() => proxy.exchanges.length === 2, 5000, 'two exchanges');
    expect(proxy.exchanges[0]).toMatchObject({ request: { url: '/boom' }, error: { code: 'COPROXY_TLS_INSPECTOR_FAILED', message: 'inspector bug' } });
  });
});
