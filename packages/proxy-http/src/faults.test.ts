import { createAgent } from '@coproxy/core';
import http from 'node:http';
import type net from 'node:net';
import { describe, expect, it } from 'vitest';
import type { HttpProxyEvent } from './events.js';
import {
  type ProxyUnderTest,
  dial,
  generatedBody,
  rawRequest,
  readAll,
  request,
  startHttpOrigin,
  startProxy,
  startTcpOrigin,
  refusingPort,
  until,
  within,
} from './test-support/harness.js';

const GOOD_REQUEST = 'GET /next HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n';

/** The proxy answers a well-formed request on a fresh connection: it survived what came before. */
async function expectStillServing(under: ProxyUnderTest, port: number): Promise<void> {
  const reply = await rawRequest(under.registry, port, GOOD_REQUEST);
  expect(reply).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
  expect(reply.endsWith('next')).toBe(true);
}

const failures = (events: readonly HttpProxyEvent[]): unknown[] =>
  events.filter((e) => e.type === 'client-error' || e.type === 'exchange-failed').map((e) => ({ ...e, message: undefined }));

describe('malformed requests', () => {
  it('answers a malformed header line with 400, reports HPE_INVALID_HEADER_TOKEN, and goes on serving', async () => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(under.registry, origin.port, 'GET / HTTP/1.1\r\nBad Header\r\n\r\n');

    expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(reply).toContain('Connection: close\r\n');
    await until(() => failures(under.events).length === 1, 5000, 'the client-error event');
    const connectionId = under.events.find((e) => e.type === 'connection-kind')?.connectionId;
    expect(failures(under.events)).toEqual([{ type: 'client-error', connectionId, code: 'HPE_INVALID_HEADER_TOKEN', status: 400, message: undefined }]);
    expect(origin.connections).toHaveLength(0);
    await expectStillServing(under, origin.port);
  });

  it('answers a request head over maxHeaderSize with 431', async () => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([origin.port], { maxHeaderSize: 2048 });

    const reply = await rawRequest(under.registry, origin.port, `GET / HTTP/1.1\r\nHost: origin.test\r\nX-Big: ${'a'.repeat(4096)}\r\n\r\n`);

    expect(reply).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    await until(() => failures(under.events).length === 1, 5000, 'the client-error event');
    expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'client-error', code: 'HPE_HEADER_OVERFLOW', status: 431 })]);
    expect(origin.connections).toHaveLength(0);
    // A head just under the bound passes.
    const fits = await rawRequest(under.registry, origin.port, `GET /fits HTTP/1.1\r\nHost: origin.test\r\nX-Big: ${'a'.repeat(1500)}\r\nConnection: close\r\n\r\n`);
    expect(fits).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*fits$/);
  });

  it('answers 408 when the request head does not arrive within headersTimeoutMs', async () => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([origin.port], { headersTimeoutMs: 300 });
    const client = await dial(under.registry, origin.port);
    try {
      client.write('GET /slow HTTP/1.1\r\nHost: origin.test\r\n'); // and never the blank line
      const reply = (await readAll(client, 5000)).toString();

      expect(reply).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'client-error', code: 'COPROXY_HTTP_REQUEST_TIMEOUT', status: 408 })]);
      expect(origin.connections).toHaveLength(0);
      await expectStillServing(under, origin.port);
    } finally {
      client.destroy();
    }
  });

  it('answers CONNECT, meant for explicit proxies, with 501', async () => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(under.registry, origin.port, 'CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n');

    expect(reply).toMatch(/^HTTP\/1\.1 501 Not Implemented\r\n/);
    await until(() => failures(under.events).length === 1, 5000, 'the client-error event');
    expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'client-error', code: 'COPROXY_HTTP_CONNECT_METHOD', status: 501 })]);
    await expectStillServing(under, origin.port);
  });
});

describe('origin failures', () => {
  it('answers 502 when nothing listens at the origin, and serves the next request', async () => {
    await using dead = await refusingPort();
    const deadPort = dead.port;
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([deadPort, origin.port]);
    const agent = createAgent({ registry: under.registry });
    try {
      const response = await request({ agent, port: deadPort, path: '/gone' });

      expect(response.status).toBe(502);
      expect(response.body.toString()).toContain('ECONNREFUSED');
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'ECONNREFUSED', status: 502 })]);
      await until(() => under.exchanges.length === 1, 5000, 'the failed exchange');
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/gone' }, response: { status: 502 }, error: { code: 'ECONNREFUSED' } });
      expect((await request({ agent, port: origin.port, path: '/next' })).body.toString()).toBe('next');
    } finally {
      agent.destroy();
    }
  });

  it('answers 504 when the origin accepts but never answers within originTimeoutMs', async () => {
    await using silent = await startTcpOrigin((socket) => socket.resume());
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([silent.port, origin.port], { originTimeoutMs: 300 });
    const agent = createAgent({ registry: under.registry });
    try {
      const response = await request({ agent, port: silent.port, path: '/slow' });

      expect(response.status).toBe(504);
      expect(response.body.toString()).toContain('COPROXY_HTTP_ORIGIN_TIMEOUT');
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_ORIGIN_TIMEOUT', status: 504 })]);
      // The silent origin's connection is given up, not left open.
      await until(() => silent.sockets.length === 1 && silent.sockets[0]!.destroyed, 5000, 'the onward connection to close');
      expect((await request({ agent, port: origin.port, path: '/next' })).body.toString()).toBe('next');
      await until(() => under.exchanges.length === 2, 5000, 'both exchanges');
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/slow' }, response: { status: 504 }, error: { code: 'COPROXY_HTTP_ORIGIN_TIMEOUT' } });
    } finally {
      agent.destroy();
    }
  });
});

describe('origins that do not speak HTTP', () => {
  it('answers 502 COPROXY_HTTP_ORIGIN_MALFORMED when the origin answers with something that is not an HTTP response', async () => {
    await using echo = await startTcpOrigin((socket) => socket.pipe(socket));
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([echo.port, origin.port]);

    // The echo origin sends the request line back, which is no status line.
    const reply = await rawRequest(under.registry, echo.port, 'GET /echo HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n');

    expect(reply).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n[^]*COPROXY_HTTP_ORIGIN_MALFORMED/);
    expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_ORIGIN_MALFORMED', status: 502 })]);
    await expectStillServing(under, origin.port);
  });
});

describe('resets mid-body', () => {
  it('cuts the origin request when the client resets halfway through a big upload, and goes on serving', async () => {
    const uploads: { received: number; complete: boolean }[] = [];
    await using origin = await startHttpOrigin((req, res) => {
      const upload = { received: 0, complete: false };
      uploads.push(upload);
      req.on('data', (chunk: Buffer) => (upload.received += chunk.length));
      req.once('end', () => {
        upload.complete = true;
        res.end(req.url?.slice(1));
      });
    });
    await using under = await startProxy([origin.port]);
    const client = await dial(under.registry, origin.port);
    try {
      client.write(`POST /upload HTTP/1.1\r\nHost: origin.test\r\nContent-Length: ${64 * 1024 * 1024}\r\n\r\n`);
      const half = generatedBody(2 * 1024 * 1024);
      for await (const chunk of half.stream) client.write(chunk as Buffer);
      await until(() => (uploads[0]?.received ?? 0) >= 1024 * 1024, 5000, 'the origin to receive part of the body');
      client.resetAndDestroy();

      await until(() => origin.connections[0]?.destroyed === true, 5000, 'the onward connection to close');
      expect(uploads).toEqual([{ received: expect.any(Number) as number, complete: false }]);
      await until(() => failures(under.events).length > 0, 5000, 'the exchange-failed event');
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_CLIENT_RESET' })]);
      await until(() => under.exchanges.length === 1, 5000, 'the failed exchange');
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/upload' }, error: { code: 'COPROXY_HTTP_CLIENT_RESET' } });
      expect(under.exchanges[0]?.request?.bodyBytes).toBeGreaterThanOrEqual(1024 * 1024);
      await expectStillServing(under, origin.port);
    } finally {
      client.destroy();
    }
  });

  it('treats a body cut short by the client closing its side as a client reset, not a malformed request', async () => {
    const uploads: { received: number; complete: boolean }[] = [];
    await using origin = await startHttpOrigin((req, res) => {
      if (req.url !== '/upload') return void res.end(req.url?.slice(1));
      const upload = { received: 0, complete: false };
      uploads.push(upload);
      // The origin answers at once, before the body: the proxy must not write into that answer.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('started ');
      req.on('data', (chunk: Buffer) => (upload.received += chunk.length));
      req.once('end', () => {
        upload.complete = true;
        res.end('done');
      });
    });
    await using under = await startProxy([origin.port]);
    const client = await dial(under.registry, origin.port);
    try {
      const reply = readAll(client);
      client.write('POST /upload HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100000\r\n\r\n');
      client.write(Buffer.alloc(50_000, 0x63));
      await until(() => uploads[0]?.received === 50_000, 5000, 'the origin to receive the first half');
      client.end();
      const text = (await reply).toString('latin1');

      expect(text).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(text).not.toContain('400 Bad Request');
      await until(() => origin.connections[0]?.destroyed === true, 5000, 'the onward connection to close');
      expect(uploads).toEqual([{ received: 50_000, complete: false }]);
      await until(() => under.exchanges.length === 1, 5000, 'the failed exchange');
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_CLIENT_RESET' })]);
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/upload', bodyBytes: 50_000 }, response: { status: 200 }, error: { code: 'COPROXY_HTTP_CLIENT_RESET' } });
      await expectStillServing(under, origin.port);
    } finally {
      client.destroy();
    }
  });

  it('cuts the client connection when the origin resets halfway through a big download, and goes on serving', async () => {
    await using origin = await startHttpOrigin((req, res) => {
      if (req.url !== '/big') return void res.end(req.url?.slice(1));
      res.writeHead(200, { 'content-length': 64 * 1024 * 1024 });
      const body = generatedBody(2 * 1024 * 1024);
      body.stream.pipe(res, { end: false });
      body.stream.once('end', () => res.socket?.destroy());
    });
    await using under = await startProxy([origin.port]);
    const agent = createAgent({ registry: under.registry });
    try {
      const outcome = await within(
        new Promise<{ status: number; received: number; error: NodeJS.ErrnoException; socket: net.Socket }>((resolve) => {
          const req = http.get({ host: '127.0.0.1', port: origin.port, path: '/big', agent }, (res) => {
            let received = 0;
            res.on('data', (chunk: Buffer) => (received += chunk.length));
            res.once('error', (error: NodeJS.ErrnoException) => resolve({ status: res.statusCode ?? 0, received, error, socket: req.socket! }));
          });
        }),
        10_000,
        'the download to break off',
      );

      expect(outcome.status).toBe(200);
      expect(outcome.error).toMatchObject({ code: 'ECONNRESET', message: 'aborted' });
      expect(outcome.received).toBeLessThanOrEqual(2 * 1024 * 1024);
      expect(outcome.socket.destroyed).toBe(true);
      await until(() => under.exchanges.length === 1, 5000, 'the failed exchange');
      expect(failures(under.events)).toEqual([expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_ORIGIN_RESET' })]);
      expect(under.exchanges[0]).toMatchObject({ request: { url: '/big' }, response: { status: 200 }, error: { code: 'COPROXY_HTTP_ORIGIN_RESET' } });
      await expectStillServing(under, origin.port);
    } finally {
      agent.destroy();
    }
  });
});

describe('a client gone in the middle of a download', () => {
  it('reports COPROXY_HTTP_CLIENT_RESET with the bytes it was sent, however the body was moving, and goes on serving', async () => {
    const total = 64 * 1024 * 1024;
    await using origin = await startHttpOrigin((req, res) => {
      if (req.url !== '/big') return void res.end(req.url?.slice(1));
      res.writeHead(200, { 'content-length': total });
      res.on('error', () => undefined); // the proxy cuts this leg when the client goes
      generatedBody(total).stream.pipe(res);
    });
    await using under = await startProxy([origin.port]);
    const socket = await dial(under.registry, origin.port);
    let received = 0;
    await within(
      new Promise<void>((resolve) => {
        socket.on('data', (chunk: Buffer) => {
          received += chunk.length;
          // Well past the first reads, so Content-Length body bytes are moving (in the kernel on Linux).
          if (received > 8 * 1024 * 1024 && !socket.destroyed) {
            socket.resetAndDestroy();
            resolve();
          }
        });
        socket.write('GET /big HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      }),
      10_000,
      'eight MiB of the download',
    );

    await until(() => under.exchanges.length === 1, 5000, 'the failed exchange');
    const exchange = under.exchanges[0]!;
    expect(exchange).toMatchObject({ request: { url: '/big' }, response: { status: 200 }, error: { code: 'COPROXY_HTTP_CLIENT_RESET' } });
    expect(exchange.response?.bodyBytes).toBeGreaterThan(8 * 1024 * 1024 - 1024);
    expect(exchange.response?.bodyBytes).toBeLessThan(total);
    await expectStillServing(under, origin.port);
  });
});

describe('the end of a connection', () => {
  it('reports nothing when a keep-alive client simply closes between requests', async () => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url?.slice(1)));
    await using under = await startProxy([origin.port]);
    const client = await dial(under.registry, origin.port);
    try {
      client.write('GET /one HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      client.end();
      const reply = (await readAll(client)).toString();

      expect(reply).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*one$/);
      await until(() => under.events.some((e) => e.type === 'closed'), 5000, 'the connection to close');
      expect(failures(under.events)).toEqual([]);
    } finally {
      client.destroy();
    }
  });
});
