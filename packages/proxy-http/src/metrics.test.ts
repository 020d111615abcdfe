import http from 'node:http';
import net from 'node:net';
import { createAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { serveMetrics } from './metrics.js';
import { dial, readAll, request, startHttpOrigin, startProxy, startTcpOrigin, refusingPort, until, within } from './test-support/harness.js';

/** The samples of a Prometheus text exposition, keyed `name{labels}` as written. */
function samples(text: string): Map<string, number> {
  const result = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    result.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return result;
}

function get(port: number, path: string): Promise<{ status: number; contentType: string | undefined; body: string }> {
  return within(
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
          res.once('end', () => resolve({ status: res.statusCode ?? 0, contentType: res.headers['content-type'], body }));
        })
        .once('error', reject);
    }),
    5000,
    `GET ${path}`,
  );
}

describe('metrics', () => {
  it('count exactly the traffic sent: connections by kind, requests, verdicts, errors, records depth, and at least its bytes', async () => {
    await using dead = await refusingPort();
    const deadPort = dead.port;
    await using origin = await startHttpOrigin((req, res) => {
      req.resume().once('end', () => res.end('x'.repeat(2000)));
    });
    await using echo = await startTcpOrigin((socket) => socket.pipe(socket));
    await using under = await startProxy([origin.port, echo.port, deadPort], {
      rules: { rules: [{ name: 'no-blocked', when: { path: '/blocked' }, verdict: 'block', status: 403 }] },
      // The opaque connection below is no valid TLS record: relayed only when asked for.
      unrecognised: 'relay',
    });
    const allowedAgent = createAgent({ registry: under.registry, keepAlive: true, maxSockets: 1 });
    const blockedAgent = createAgent({ registry: under.registry, keepAlive: true, maxSockets: 1 });
    const failingAgent = createAgent({ registry: under.registry });
    const upload = Buffer.alloc(10_000, 0x75);
    const opaque = Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), Buffer.alloc(997, 0xab)]);
    let responseBodies = 0;
    try {
      // One keep-alive connection with four allowed requests (three GET, one POST).
      for (const path of ['/a', '/b', '/c']) responseBodies += (await request({ agent: allowedAgent, port: origin.port, path })).body.length;
      responseBodies += (await request({ agent: allowedAgent, port: origin.port, method: 'POST', path: '/d', body: upload })).body.length;
      // Another with two blocked GETs.
      for (let i = 0; i < 2; i++) expect((await request({ agent: blockedAgent, port: origin.port, path: '/blocked' })).status).toBe(403);
      // A third whose origin is unreachable.
      expect((await request({ agent: failingAgent, port: deadPort, path: '/down' })).status).toBe(502);
      // And one opaque connection.
      const client: net.Socket = await dial(under.registry, echo.port);
      const echoed = readAll(client);
      client.end(opaque);
      expect((await echoed).equals(opaque)).toBe(true);
    } finally {
      allowedAgent.destroy();
      blockedAgent.destroy();
      failingAgent.destroy();
    }
    // Byte counts are taken as connections close.
    await until(() => under.events.filter((e) => e.type === 'closed').length === 4, 5000, 'the four connections to close');

    const text = await under.proxy.metrics.text();
    const s = samples(text);
    expect({
      http: s.get('coproxy_http_connections_total{kind="http"}'),
      opaque: s.get('coproxy_http_connections_total{kind="opaque"}'),
      open: s.get('coproxy_http_open_connections'),
      get: s.get('coproxy_http_requests_total{method="GET"}'),
      post: s.get('coproxy_http_requests_total{method="POST"}'),
      allow: s.get('coproxy_http_verdicts_total{verdict="allow"}'),
      block: s.get('coproxy_http_verdicts_total{verdict="block"}'),
      annotate: s.get('coproxy_http_verdicts_total{verdict="annotate"}'),
      refused: s.get('coproxy_http_errors_total{code="ECONNREFUSED"}'),
      depthCount: s.get('coproxy_http_records_depth_count'),
      depthSum: s.get('coproxy_http_records_depth_sum'),
      depthOne: s.get('coproxy_http_records_depth_bucket{le="1"}'),
    }).toEqual({
      http: 3,
      opaque: 1,
      open: 0,
      get: 6,
      post: 1,
      allow: 5, // the unreachable request was allowed, then failed
      block: 2,
      annotate: undefined, // no sample for a label never used
      refused: 1,
      depthCount: 4,
      depthSum: 4, // each flow crossed this proxy only
      depthOne: 4,
    });
    expect([...s.keys()].filter((k) => k.startsWith('coproxy_http_errors_total'))).toEqual(['coproxy_http_errors_total{code="ECONNREFUSED"}']);
    expect(s.get('coproxy_http_bytes_total{direction="from_client"}')).toBeGreaterThanOrEqual(upload.length + opaque.length);
    expect(s.get('coproxy_http_bytes_total{direction="to_client"}')).toBeGreaterThanOrEqual(responseBodies + opaque.length);

    // The same figures over HTTP, as Prometheus scrapes them.
    const server = await serveMetrics(under.proxy.metrics, '127.0.0.1', 0);
    try {
      const port = (server.address() as net.AddressInfo).port;
      const scraped = await get(port, '/metrics');
      expect(scraped.status).toBe(200);
      expect(scraped.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
      // The heap gauge is read at each scrape, so it moves between two; every counter must not.
      const withoutHeap = (m: Map<string, number>) => new Map([...m].filter(([k]) => !k.endsWith('_heap_used_bytes')));
      expect(withoutHeap(samples(scraped.body))).toEqual(withoutHeap(s));
      expect(samples(scraped.body).get('coproxy_http_heap_used_bytes')).toBeGreaterThan(1_000_000);
      expect((await get(port, '/other')).status).toBe(404);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('count a connection the redirector refused in errors_total and rejected_total, by its code, and open nothing', async () => {
    await using origin = await startHttpOrigin((_req, res) => res.end('ok'));
    await using under = await startProxy([origin.port]);
    const listener = await under.proxy.listening();
    // Straight to the listener, without the redirect layer's header: refused before inspection.
    const client = net.connect({ host: listener.address, port: listener.port });
    client.on('error', () => undefined); // the refusal may reach the client as a reset
    client.end('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await until(() => under.events.some((e) => e.type === 'rejected'), 5000, 'the connection to be refused');
    client.destroy();
    const rejected = under.events.find((e) => e.type === 'rejected');
    const code = rejected?.type === 'rejected' ? rejected.error.code : 'none';

    const s = samples(await under.proxy.metrics.text());
    expect(code).toMatch(/^COPROXY_/);
    expect({
      errors: s.get(`coproxy_http_errors_total{code="${code}"}`),
      rejected: s.get(`coproxy_http_rejected_total{code="${code}"}`),
      accepted: [...s.keys()].filter((k) => k.startsWith('coproxy_http_accepted_total')),
      open: s.get('coproxy_http_open_connections'),
      exchanges: under.exchanges.length,
    }).toEqual({ errors: 1, rejected: 1, accepted: [], open: 0, exchanges: 0 });
  });

  it('keep the counts of two proxies in one process apart', async () => {
    await using origin = await startHttpOrigin((_req, res) => res.end('ok'));
    await using first = await startProxy([origin.port]);
    await using second = await startProxy([origin.port]);
    const agent = createAgent({ registry: first.registry });
    try {
      await request({ agent, port: origin.port });
    } finally {
      agent.destroy();
    }

    expect(samples(await first.proxy.metrics.text()).get('coproxy_http_requests_total{method="GET"}')).toBe(1);
    expect(samples(await second.proxy.metrics.text()).get('coproxy_http_requests_total{method="GET"}')).toBeUndefined();
  });
});
