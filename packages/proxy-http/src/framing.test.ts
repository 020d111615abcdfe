import type http from 'node:http';
import { describe, expect, it } from 'vitest';
import type { HttpProxyEvent } from './events.js';
import { type HttpOrigin, dial, rawRequest, readAll, readUntil, startHttpOrigin, startProxy, until } from './test-support/harness.js';

/** What the origin's own parser made of each request it was sent, and whether its body arrived whole. */
interface Seen {
  readonly line: string;
  readonly headers: http.IncomingHttpHeaders;
  body: string;
  complete: boolean;
}

async function startObservedOrigin(): Promise<HttpOrigin & { readonly seen: Seen[] }> {
  const seen: Seen[] = [];
  const origin = await startHttpOrigin((req, res) => {
    const entry: Seen = { line: `${req.method} ${req.url}`, headers: req.headers, body: '', complete: false };
    seen.push(entry);
    req.setEncoding('latin1');
    req.on('data', (chunk: string) => (entry.body += chunk));
    req.once('end', () => {
      entry.complete = true;
      res.end(`served ${req.url}`);
    });
  });
  return Object.assign(origin, { seen });
}

const clientErrors = (events: readonly HttpProxyEvent[]): HttpProxyEvent[] => events.filter((e) => e.type === 'client-error');

describe('framing is never altered in flight', () => {
  // The body of each carries a second request: an origin that lost the framing header would read it as one no rule saw.
  const SMUGGLED = 'GET /smuggled HTTP/1.1\r\nHost: origin.test\r\n\r\n';
  const CASES: readonly [name: string, request: string][] = [
    ['Connection: content-length', `POST /x HTTP/1.1\r\nHost: origin.test\r\nConnection: content-length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    ['Connection: keep-alive, Content-Length', `POST /x HTTP/1.1\r\nHost: origin.test\r\nConnection: keep-alive, Content-Length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
    ['Connection: transfer-encoding', `POST /x HTTP/1.1\r\nHost: origin.test\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n${SMUGGLED.length.toString(16)}\r\n${SMUGGLED}\r\n0\r\n\r\n`],
    ['Connection: host', 'GET /x HTTP/1.1\r\nHost: origin.test\r\nConnection: host\r\n\r\n'],
    ['a second Connection header naming content-length', `POST /x HTTP/1.1\r\nHost: origin.test\r\nConnection: keep-alive\r\nConnection: content-length\r\nContent-Length: ${SMUGGLED.length}\r\n\r\n${SMUGGLED}`],
  ];

  it.each(CASES)('refuses %s with 400 before anything reaches the origin', async (_name, request) => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(under.registry, origin.port, request);

    expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(reply).toContain('Connection: close\r\n');
    expect(origin.connections).toHaveLength(0);
    expect(origin.seen).toEqual([]);
    await until(() => clientErrors(under.events).length === 1, 5000, 'the client-error event');
    expect(clientErrors(under.events)).toEqual([expect.objectContaining({ code: 'COPROXY_HTTP_CONNECTION_NAMES_FRAMING', status: 400 })]);
  });

  it('still honours Connection options that name hop-by-hop fields (keep-alive, TE, Upgrade)', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(under.registry, origin.port, 'POST /ok HTTP/1.1\r\nHost: origin.test\r\nConnection: close, TE\r\nTE: trailers\r\nContent-Length: 4\r\n\r\nbody');

    expect(reply).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*served \/ok$/);
    expect(origin.seen).toEqual([expect.objectContaining({ line: 'POST /ok', body: 'body', complete: true })]);
    expect(origin.seen[0]?.headers.te).toBeUndefined();
  });

  it('lets rules see a request without the fields its Connection header names, as the origin will', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], {
      rules: { rules: [{ name: 'auth-required', when: { header: { name: 'authorization', present: false } }, verdict: 'block', status: 401 }] },
    });

    const stripped = await rawRequest(under.registry, origin.port, 'GET /x HTTP/1.1\r\nHost: origin.test\r\nAuthorization: Bearer t\r\nConnection: close, Authorization\r\n\r\n');
    const kept = await rawRequest(under.registry, origin.port, 'GET /y HTTP/1.1\r\nHost: origin.test\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n');

    expect(stripped).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/);
    expect(kept).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(origin.seen.map((s) => [s.line, s.headers.authorization])).toEqual([['GET /y', 'Bearer t']]);
  });

  it.each(['Content-Length', 'transfer-encoding', 'Connection', 'Host'])(
    'fails an exchange whose inspector annotates %s (502), rather than reframe or reroute what it inspected',
    async (name) => {
      await using origin = await startObservedOrigin();
      await using under = await startProxy([origin.port], {
        inspectors: [{ name: 'reframer', inspectRequest: () => ({ action: 'annotate', headers: { [name]: '0' } }) }],
      });

      const reply = await rawRequest(under.registry, origin.port, 'POST /x HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody');

      expect(reply).toMatch(/^HTTP\/1\.1 502 Bad Gateway\r\n[^]*COPROXY_HTTP_INSPECTOR_FAILED/);
      expect(origin.seen).toEqual([]);
    },
  );

  it('keeps a response Content-Length that the origin named in Connection: the client frames the body as the proxy did', async () => {
    await using origin = await startHttpOrigin((req, _res) => {
      // Written raw: Node's own server would not send this.
      req.socket.write('HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nfirst');
    });
    await using under = await startProxy([origin.port]);
    const client = await dial(under.registry, origin.port);
    try {
      const first = readUntil(client, (r) => r.toString().endsWith('first'));
      client.write('GET /first HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      expect((await first).toString()).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect((await first).toString()).toMatch(/\r\nContent-Length: 5\r\n/i);
    } finally {
      client.destroy();
    }
  });
});

describe('malformed requests get a status response', () => {
  // A code is a string, or a pattern where Node versions differ on who refuses (Node 22's
  // llhttp refuses an empty Transfer-Encoding itself; Node 20's lets the proxy's check do it).
  const CASES: readonly [name: string, status: string, request: string, code: string | RegExp][] = [
    ['a bad chunk size', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n', 'HPE_INVALID_CHUNK_SIZE'],
    ['a bad chunk size after a good chunk', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5x\r\nhello\r\n0\r\n\r\n', 'HPE_INVALID_CHUNK_SIZE'],
    ['a control character in a chunk extension', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5;a\u0001b\r\nhello\r\n0\r\n\r\n', 'HPE_STRICT'],
    ['Transfer-Encoding: xchunked', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 'COPROXY_HTTP_TRANSFER_ENCODING_INVALID'],
    ['an empty Transfer-Encoding', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \r\n\r\n5\r\nhello\r\n0\r\n\r\n', /^(?:COPROXY_HTTP_TRANSFER_ENCODING_INVALID|HPE_INVALID_TRANSFER_ENCODING)$/],
    ['Transfer-Encoding in an HTTP/1.0 request', '400 Bad Request', 'POST /x HTTP/1.0\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 'COPROXY_HTTP_TRANSFER_ENCODING_INVALID'],
    ['an unknown transfer coding before chunked', '501 Not Implemented', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: rot13, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n', 'COPROXY_HTTP_TRANSFER_CODING_UNKNOWN'],
    ['a chunk size of 7FFFFFFFFFFFFFFF', '413 Payload Too Large', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n7FFFFFFFFFFFFFFF\r\nhello', 'COPROXY_HTTP_BODY_TOO_LARGE'],
    ['a chunk size past the bound after a good chunk', '413 Payload Too Large', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10000000001\r\nhello', 'COPROXY_HTTP_BODY_TOO_LARGE'],
    ['a chunked body on an Upgrade request, whatever its chunk sizes', '400 Bad Request', 'POST /x HTTP/1.1\r\nHost: o\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: chunked\r\n\r\n7FFFFFFFFFFFFFFF\r\nhello', 'COPROXY_HTTP_UPGRADE_WITH_CHUNKED_BODY'],
    ['a Content-Length past the bound', '413 Payload Too Large', 'POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: 1099511627777\r\n\r\nhello', 'COPROXY_HTTP_BODY_TOO_LARGE'],
    ['an HTTP/0.9 request line', '505 HTTP Version Not Supported', 'GET /x\r\n\r\n', 'COPROXY_HTTP_HTTP_VERSION'],
    ['an HTTP/2.0 request line', '505 HTTP Version Not Supported', 'GET /x HTTP/2.0\r\nHost: o\r\n\r\n', 'COPROXY_HTTP_HTTP_VERSION'],
  ];

  it.each(CASES)('answers %s with %s, and the origin gets no request', async (_name, status, request, code) => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(under.registry, origin.port, request);

    expect(reply).toMatch(new RegExp(`^HTTP/1\\.1 ${status}\\r\\n`));
    expect(reply).toContain('Connection: close\r\n');
    expect(origin.seen.filter((s) => s.complete)).toEqual([]);
    await until(() => clientErrors(under.events).length === 1, 5000, 'the client-error event');
    expect(clientErrors(under.events)).toEqual([expect.objectContaining({ code: typeof code === 'string' ? code : (expect.stringMatching(code) as unknown), status: Number(status.slice(0, 3)) })]);
    // And it goes on serving.
    const next = await rawRequest(under.registry, origin.port, 'GET /next HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n');
    expect(next).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*served \/next$/);
  });

  it('answers a chunked body that grows past maxBodySize with 413, and tears down the origin leg it had started', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { maxBodySize: 10 });
    const client = await dial(under.registry, origin.port);
    try {
      client.write('POST /big HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n');
      await until(() => origin.seen[0]?.body === 'hello ', 5000, 'the first chunk at the origin');
      const reply = readAll(client);
      client.write('6\r\nworld!\r\n0\r\n\r\n');
      expect((await reply).toString()).toMatch(/^HTTP\/1\.1 413 Payload Too Large\r\n/);
    } finally {
      client.destroy();
    }
    // The origin saw the start of the body, never its end: it was cut, not left to read on.
    await until(() => origin.connections.every((s) => s.destroyed), 5000, 'the origin leg to close');
    expect(origin.seen).toEqual([expect.objectContaining({ line: 'POST /big', body: 'hello ', complete: false })]);
  });

  it('answers a bad chunk size after part of the body was forwarded with 400, and cuts the origin leg', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);
    const client = await dial(under.registry, origin.port);
    try {
      client.write('POST /part HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n');
      await until(() => origin.seen[0]?.body === 'hello', 5000, 'the first chunk at the origin');
      const reply = readAll(client);
      client.write(`zz\r\n${'GET /smuggled HTTP/1.1\r\nHost: o\r\n\r\n'}`);
      expect((await reply).toString()).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    } finally {
      client.destroy();
    }
    await until(() => origin.connections.every((s) => s.destroyed), 5000, 'the origin leg to close');
    expect(origin.seen).toEqual([expect.objectContaining({ line: 'POST /part', complete: false })]);
  });

  it('answers the requests before a malformed pipelined one, then the malformed one, then closes', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);

    const reply = await rawRequest(
      under.registry,
      origin.port,
      'GET /one HTTP/1.1\r\nHost: o\r\n\r\nPOST /two HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\nGET /three HTTP/1.1\r\nHost: o\r\n\r\n',
    );

    expect(reply).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*served \/oneHTTP\/1\.1 400 Bad Request\r\n[^]*Connection: close\r\n/);
    expect(origin.seen.map((s) => s.line)).toEqual(['GET /one']);
  });
});
