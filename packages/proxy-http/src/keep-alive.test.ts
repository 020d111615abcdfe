import { createAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { rawRequest, request, sleep, startHttpOrigin, startProxy, until } from './test-support/harness.js';

describe('keep-alive through the proxy', () => {
  it('carries many requests of one client connection to the origin over one onward connection', async () => {
    await using origin = await startHttpOrigin((req, res) => {
      res.setHeader('x-origin-connection', String(origin.connections.indexOf(req.socket)));
      res.end(`hello ${req.url ?? ''}`);
    });
    await using under = await startProxy([origin.port]);
    const agent = createAgent({ registry: under.registry, keepAlive: true, maxSockets: 1 });
    try {
      const responses = [];
      for (let i = 1; i <= 5; i++) responses.push(await request({ agent, port: origin.port, path: `/r${i}` }));

      expect(responses.map((r) => [r.status, r.body.toString()])).toEqual([1, 2, 3, 4, 5].map((i) => [200, `hello /r${i}`]));
      expect(responses.map((r) => r.reusedSocket)).toEqual([false, true, true, true, true]);
      expect(responses.map((r) => r.headers['x-origin-connection'])).toEqual(['0', '0', '0', '0', '0']);
      expect(origin.connections).toHaveLength(1);
      await until(() => under.exchanges.length === 5, 5000, 'five exchanges');
      expect(under.exchanges.map((x) => x.sequence)).toEqual([1, 2, 3, 4, 5]);
      expect(new Set(under.exchanges.map((x) => x.connection.id)).size).toBe(1);
      expect(under.exchanges.every((x) => x.kind === 'http' && x.response?.status === 200 && x.decision?.action === 'allow')).toBe(true);
      expect(under.exchanges.map((x) => x.request?.url)).toEqual(['/r1', '/r2', '/r3', '/r4', '/r5']);
    } finally {
      agent.destroy();
    }
  });

  it('opens one onward connection per client connection, each with its own sequence', async () => {
    await using origin = await startHttpOrigin((_req, res) => res.end('ok'));
    await using under = await startProxy([origin.port]);
    const first = createAgent({ registry: under.registry, keepAlive: true });
    const second = createAgent({ registry: under.registry, keepAlive: true });
    try {
      for (const agent of [first, second, first, second]) expect((await request({ agent, port: origin.port })).status).toBe(200);

      expect(origin.connections).toHaveLength(2);
      await until(() => under.exchanges.length === 4, 5000, 'four exchanges');
      const byConnection = new Map<string, number[]>();
      for (const x of under.exchanges) byConnection.set(x.connection.id, [...(byConnection.get(x.connection.id) ?? []), x.sequence]);
      expect([...byConnection.values()]).toEqual([
        [1, 2],
        [1, 2],
      ]);
    } finally {
      first.destroy();
      second.destroy();
    }
  });

  it('answers pipelined requests in the order they were sent', async () => {
    await using origin = await startHttpOrigin((req, res) => {
      // The first answer is the slow one: it must still come first.
      void sleep(req.url === '/first' ? 100 : 0).then(() => res.end(`answer to ${req.url ?? ''}`));
    });
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(
      under.registry,
      origin.port,
      'GET /first HTTP/1.1\r\nHost: origin.test\r\n\r\nGET /second HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n',
    );

    const bodies = reply.split(/HTTP\/1\.1 200 OK\r\n/).slice(1).map((response) => response.slice(response.indexOf('\r\n\r\n') + 4));
    expect(bodies).toEqual(['answer to /first', 'answer to /second']);
    await until(() => under.exchanges.length === 2, 5000, 'both exchanges');
    expect(under.exchanges.map((x) => [x.sequence, x.request?.url])).toEqual([
      [1, '/first'],
      [2, '/second'],
    ]);
  });
});
