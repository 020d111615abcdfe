import { describe, expect, it } from 'vitest';
import type { Inspector } from './inspector.js';
import type { HttpExchange } from './events.js';
import { createHttpProxy } from './proxy.js';
import { startProxy, tempDir, uniqueId, until, within } from './test-support/harness.js';
import { h2Client, startH2cOrigin } from './test-support/h2.js';

const json = (body: Buffer): { headers: Record<string, string>; bodyBytes: number } => JSON.parse(body.toString()) as { headers: Record<string, string>; bodyBytes: number };

describe('h2c with prior knowledge', () => {
  it('inspects each stream and forwards it over HTTP/2 to the origin, with the canonical authority', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    const get = await client.request({ ':path': '/a?x=1', ':authority': `Example.TEST.:${origin.port}`, 'user-agent': 'h2-test' });
    const post = await client.request({ ':method': 'POST', ':path': '/upload' }, Buffer.alloc(100_000, 7));

    expect([get.status, get.headers['x-origin']]).toEqual([200, 'h2c']);
    expect(json(get.body).headers).toMatchObject({ ':method': 'GET', ':path': '/a?x=1', ':scheme': 'http', ':authority': `example.test:${origin.port}`, 'user-agent': 'h2-test' });
    expect([post.status, json(post.body).bodyBytes]).toEqual([200, 100_000]);
    expect(origin.requests).toHaveLength(2);
    // One client connection, one origin connection: its streams are the client's.
    expect(origin.sessions).toHaveLength(1);
    await until(() => under.exchanges.length === 2, 5000, 'two exchanges');
    const [first, second] = [...under.exchanges].sort((a, b) => (a.stream ?? 0) - (b.stream ?? 0));
    expect(first).toMatchObject({ kind: 'http', protocol: 'h2c', stream: 1, request: { method: 'GET', url: '/a?x=1', host: 'example.test' }, response: { status: 200 }, decision: { action: 'allow' } });
    expect(second).toMatchObject({ protocol: 'h2c', stream: 3, request: { method: 'POST', bodyBytes: 100_000 }, response: { status: 200 } });
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'connection-kind', kind: 'http', protocol: 'h2c' }));
    const metrics = await under.proxy.metrics.registry.metrics();
    expect(metrics).toMatch(/coproxy_http_requests_total\{method="GET"\} 1/);
    expect(metrics).toMatch(/coproxy_http_requests_total\{method="POST"\} 1/);
  });

  it('answers a blocked stream 403 on its own stream while its siblings carry on, under every path reading', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port], {
      rules: { rules: [{ name: 'no-admin', when: { path: '/admin/*' }, verdict: 'block', status: 403, reason: 'admin is off limits' }] },
    });
    await using client = await h2Client(under.registry, origin.port);
    const [blocked, escaped, dotted, ok] = await Promise.all([
      client.request({ ':path': '/admin/x' }),
      client.request({ ':path': '/%61dmin/x' }),
      client.request({ ':path': '/ok/..%2Fadmin/x' }),
      client.request({ ':path': '/public' }),
    ]);
    expect([blocked.status, blocked.body.toString()]).toEqual([403, 'admin is off limits\n']);
    expect([escaped.status, dotted.status, ok.status]).toEqual([403, 403, 200]);
    expect(origin.requests.map((r) => r.headers[':path'])).toEqual(['/public']);
    // The session is still good for more.
    expect((await client.request({ ':path': '/again' })).status).toBe(200);
    await until(() => under.exchanges.length === 5, 5000, 'five exchanges');
    expect(under.exchanges.filter((x) => x.decision?.action === 'block').map((x) => x.decision?.by)).toEqual([['rule:no-admin'], ['rule:no-admin'], ['rule:no-admin']]);
  });

  it('refuses a stream whose :authority and host differ, an https scheme and a non-origin-form path, each on its own stream', async () => {
    await using origin = await startH2cOrigin();
    const blockEvil: Inspector = { name: 'no-evil', inspectRequest: (req) => (req.host === 'evil.test' ? { action: 'block' } : undefined) };
    await using under = await startProxy([origin.port], { inspectors: [blockEvil] });
    await using client = await h2Client(under.registry, origin.port);
    const [mismatch, https, absolute, sameHost, evil] = await Promise.all([
      client.request({ ':authority': 'ok.test', host: 'evil.test' }),
      client.request({ ':scheme': 'https', ':authority': 'ok.test' }),
      // nghttp2 resets a :path that is not origin-form (or *) itself; either way it never goes on.
      client.request({ ':authority': 'ok.test', ':path': 'http://evil.test/' }).then((r) => r.status, (error: Error) => error.message),
      client.request({ ':authority': 'OK.test', host: 'ok.test.', ':path': '/same' }),
      client.request({ ':authority': 'evil.test' }),
    ]);
    expect([mismatch.status, mismatch.body.toString()]).toEqual([400, expect.stringContaining('COPROXY_HTTP_AUTHORITY_MISMATCH')]);
    expect([https.status, https.body.toString()]).toEqual([400, expect.stringContaining('COPROXY_HTTP_TARGET_INVALID')]);
    expect(absolute).toMatch(/^400$|NGHTTP2_PROTOCOL_ERROR/);
    expect(evil.status).toBe(403);
    expect(sameHost.status).toBe(200);
    // The origin got the one request the rules judged, under the authority they saw and no second host.
    expect(origin.requests).toHaveLength(1);
    expect(origin.requests[0]!.headers).toMatchObject({ ':authority': 'ok.test', ':path': '/same' });
    expect(origin.requests[0]!.headers.host).toBeUndefined();
    await until(() => under.events.filter((e) => e.type === 'client-error').length >= 2, 5000, 'two client errors');
    expect(under.events.filter((e) => e.type === 'client-error').map((e) => (e as { code: string }).code)).toEqual(
      expect.arrayContaining(['COPROXY_HTTP_AUTHORITY_MISMATCH', 'COPROXY_HTTP_TARGET_INVALID']),
    );
  });

  it('adds an annotation upstream, and fails only the stream whose inspector throws or annotates a framing field', async () => {
    await using origin = await startH2cOrigin();
    const responses: [string, number, string | string[] | undefined][] = [];
    const inspector: Inspector = {
      name: 'picky',
      inspectResponse: (req, res) => void responses.push([req.path, res.status, res.headers['x-origin']]),
      inspectRequest: (req) => {
        if (req.path === '/throw') throw new Error('inspector bug');
        if (req.path === '/frame') return { action: 'annotate', headers: { 'content-length': '5' } };
        return { action: 'annotate', headers: { 'X-Inspected': 'yes' } };
      },
    };
    await using under = await startProxy([origin.port], { inspectors: [inspector] });
    await using client = await h2Client(under.registry, origin.port);
    const [thrown, framing, fine] = await Promise.all([client.request({ ':path': '/throw' }), client.request({ ':path': '/frame' }), client.request({ ':path': '/fine' })]);
    expect([thrown.status, thrown.body.toString()]).toEqual([502, expect.stringContaining('COPROXY_HTTP_INSPECTOR_FAILED')]);
    expect(framing.status).toBe(502);
    expect([fine.status, json(fine.body).headers['x-inspected']]).toEqual([200, 'yes']);
    expect(origin.requests).toHaveLength(1);
    // Response inspectors see the origin's answer before the client does.
    expect(responses).toEqual([['/fine', 200, 'h2c']]);
  });

  it('dials the origin through connectOnward: a second proxy in the chain inspects the same streams and sees both redirects', async () => {
    await using origin = await startH2cOrigin();
    using registry = tempDir('coproxy-http-registry-');
    const first = createHttpProxy({ id: uniqueId('h2c-a'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const second = createHttpProxy({
      id: uniqueId('h2c-b'),
      priority: 2,
      match: { ports: [origin.port] },
      registry: registry.path,
      rules: { rules: [{ name: 'second-blocks', when: { path: '/second/*' }, verdict: 'block', status: 451 }] },
    });
    const seen: HttpExchange[] = [];
    const subscription = second.exchanges$.subscribe((x) => seen.push(x));
    try {
      await Promise.all([first.listening(), second.listening()]);
      await using client = await h2Client(registry.path, origin.port);
      const [ok, blocked] = await Promise.all([client.request({ ':path': '/fine' }), client.request({ ':path': '/second/x' })]);
      expect([ok.status, blocked.status]).toEqual([200, 451]);
      await until(() => seen.length === 2, 5000, "the second proxy's exchanges");
      for (const x of seen) expect(x).toMatchObject({ protocol: 'h2c', connection: { redirectedBy: [first.id, second.id] } });
      expect(origin.requests.map((r) => r.headers[':path'])).toEqual(['/fine']);
    } finally {
      subscription.unsubscribe();
      await second.close();
      await first.close();
    }
  });

  it("passes on the origin's trailers (gRPC's grpc-status)", async () => {
    await using origin = await startH2cOrigin((stream) => {
      stream.resume();
      stream.once('end', () => {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
        stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'ok' }));
        stream.end(Buffer.from([0, 0, 0, 0, 0]));
      });
      return true;
    });
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    const stream = client.session.request({ ':method': 'POST', ':path': '/pkg.Service/Call', ':authority': 'grpc.test', 'content-type': 'application/grpc', te: 'trailers' });
    const trailers = new Promise<Record<string, unknown>>((resolve) => stream.once('trailers', (t: Record<string, unknown>) => resolve(t)));
    stream.end(Buffer.from([0, 0, 0, 0, 0]));
    stream.resume();
    expect(await within(trailers, 5000, 'the trailers')).toMatchObject({ 'grpc-status': '0', 'grpc-message': 'ok' });
  });

  it("does not forward the client's request trailers (no rule could judge them: they follow the verdict); the body goes on", async () => {
    const received: Record<string, unknown>[] = [];
    await using origin = await startH2cOrigin((stream) => {
      stream.once('trailers', (t: Record<string, unknown>) => received.push(t));
      stream.resume();
      stream.once('end', () => stream.respond({ ':status': 200 }, { endStream: true }));
      return true;
    });
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    const stream = client.session.request({ ':method': 'POST', ':path': '/upload', ':authority': 'up.test' }, { waitForTrailers: true });
    stream.once('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc123' }));
    const status = new Promise<number>((resolve) => stream.once('response', (h) => resolve(Number(h[':status']))));
    stream.end(Buffer.from('payload'));
    stream.resume();
    expect(await within(status, 5000, 'the answer')).toBe(200);
    expect(received.some((fields) => 'x-checksum' in fields)).toBe(false);
  });

  it('answers 502 on the stream when the origin cannot be reached', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    await origin[Symbol.asyncDispose]();
    const refused = await client.request({ ':path': '/' });
    expect([refused.status, refused.body.toString()]).toEqual([502, expect.stringContaining('ECONNREFUSED')]);
  });
});
