import http from 'node:http';
import type net from 'node:net';
import { describe, expect, it } from 'vitest';
import { serveMetrics } from './metrics.js';
import { GREASY_FIELDS, clientHello, ext } from './test-support/hello-builder.js';
import { type ProxyUnderTest, dial, randomPayload, readExactly, readToEnd, startEchoOrigin, startProxy, until, within } from './test-support/harness.js';

/** One connection through the proxy: sends `bytes`, reads until the proxy or origin closes, returns what came back. */
async function exchange(proxy: ProxyUnderTest, port: number, bytes: Buffer, echoed: boolean): Promise<Buffer> {
  const client = await dial(proxy.registry, port);
  client.write(bytes);
  if (!echoed) return (await readToEnd(client)).bytes;
  const back = await readExactly(client, bytes.length);
  client.end();
  await readToEnd(client);
  return back;
}

function scrape(port: number, path: string): Promise<{ status: number; body: string }> {
  return within(
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
          res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .once('error', reject);
    }),
    5000,
    `GET ${path}`,
  );
}

describe('metrics', () => {
  it('count connections, handshakes, errors and bytes as they were sent', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { policy: { rules: [{ name: 'blocked', when: { sni: 'blocked.example' }, action: 'block' }] } });
    const spliced = Buffer.concat([clientHello(GREASY_FIELDS), randomPayload(300_000)]);
    const blocked = clientHello({ extensions: [ext.serverName('blocked.example')] });
    // 'G' then random bytes: not a handshake record, and no request line: unrecognised,
    // blocked by the default policy (closed, nothing sent back).
    const opaque = randomPayload(100_000).fill(0x47, 0, 1);
    // The duplicate comes last, so the proxy reads the whole hello before it can tell.
    const malformed = clientHello({ extensions: [ext.serverName('m.example'), ext.raw(0x0015, Buffer.alloc(100)), ext.serverName('m.example')] });

    const back = [
      await exchange(proxy, origin.port, spliced, true),
      await exchange(proxy, origin.port, blocked, false),
      await exchange(proxy, origin.port, opaque, false),
      await exchange(proxy, origin.port, malformed, false),
    ];
    await until(() => proxy.eventsOf('closed').length === 4, 5000, 'four connections to close');

    const { metrics } = proxy.proxy;
    const values = async (metric: { get(): Promise<{ values: { labels: object; value: number }[] }> }) =>
      (await metric.get()).values.map(({ labels, value }) => ({ labels, value }));
    expect(await values(metrics.connections)).toEqual(
      expect.arrayContaining([
        { labels: { kind: 'tls' }, value: 2 },
        { labels: { kind: 'opaque' }, value: 1 },
      ]),
    );
    expect(await values(metrics.handshakes)).toEqual(
      expect.arrayContaining([
        { labels: { action: 'splice' }, value: 1 },
        { labels: { action: 'block' }, value: 1 },
      ]),
    );
    expect((await values(metrics.handshakes)).length).toBe(2);
    expect(await values(metrics.errors)).toEqual([{ labels: { code: 'COPROXY_TLS_DUPLICATE_EXTENSION' }, value: 1 }]);
    // The unrecognised bytes and the malformed hello: both under the default policy.
    expect(await values(metrics.unrecognised)).toEqual([{ labels: { action: 'block' }, value: 2 }]);
    const sent = spliced.length + blocked.length + opaque.length + malformed.length;
    const received = back.reduce((sum, bytes) => sum + bytes.length, 0);
    expect(received).toBe(spliced.length + 7 + 7); // two 7-byte alerts
    expect(await values(metrics.bytes)).toEqual(
      expect.arrayContaining([
        { labels: { direction: 'from_client' }, value: sent },
        { labels: { direction: 'to_client' }, value: received },
      ]),
    );
    expect(await values(metrics.openConnections)).toEqual([{ labels: {}, value: 0 }]);
    expect(await values(metrics.exchanges)).toEqual([{ labels: {}, value: 0 }]);
    // The redirector's events, counted by core's vendor kit: four direct connections, each
    // with this proxy's redirect alone in its records.
    expect(await values(metrics.accepted)).toEqual([{ labels: { state: 'NotRedirected' }, value: 4 }]);
    const depth = (await metrics.recordsDepth.get()).values;
    expect(depth.find((v) => v.metricName === 'coproxy_tls_records_depth_count')?.value).toBe(4);
    expect(depth.find((v) => v.metricName === 'coproxy_tls_records_depth_sum')?.value).toBe(4);
    expect(await values(metrics.rejected)).toEqual([]);
  });

  it('are served as Prometheus text at /metrics, and nothing else is', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);
    await exchange(proxy, origin.port, clientHello(GREASY_FIELDS), true);
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the connection to close');
    const server = await serveMetrics(proxy.proxy.metrics, '127.0.0.1', 0);
    try {
      const port = (server.address() as net.AddressInfo).port;

      const metrics = await scrape(port, '/metrics');
      const other = await scrape(port, '/');

      expect(metrics.status).toBe(200);
      expect(metrics.body).toContain('coproxy_tls_connections_total{kind="tls"} 1');
      expect(metrics.body).toContain('coproxy_tls_handshakes_total{action="splice"} 1');
      expect(metrics.body).toContain('# TYPE coproxy_tls_bytes_total counter');
      expect(other.status).toBe(404);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
