import { describe, expect, it } from 'vitest';
import type { RuleFile } from './rules.js';
import {
  type HttpOrigin,
  type ProxyUnderTest,
  type TcpOrigin,
  dial,
  rawRequest,
  readAll,
  readUntil,
  sleep,
  startHttpOrigin,
  startProxy,
  startTcpOrigin,
  until,
} from './test-support/harness.js';

/** A path prefix that is blocked when sent plainly: what every trick below tries to reach. */
const RULES: RuleFile = { rules: [{ name: 'no-secret', when: { path: '/secret*' }, verdict: 'block', status: 403, reason: 'secret' }] };

/** An origin that keeps the request lines it parsed. */
async function startObservedOrigin(): Promise<HttpOrigin & { readonly seen: string[] }> {
  const seen: string[] = [];
  const origin = await startHttpOrigin((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    req.resume().once('end', () => res.end(`served ${req.url}`));
  });
  return Object.assign(origin, { seen });
}

/** A raw TCP origin that echoes and keeps what it received. */
async function startEchoOrigin(): Promise<TcpOrigin & { readonly received: () => Buffer }> {
  const chunks: Buffer[] = [];
  const origin = await startTcpOrigin((socket) => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.pipe(socket);
  });
  return Object.assign(origin, { received: () => Buffer.concat(chunks) });
}

async function metric(under: ProxyUnderTest, name: string): Promise<number | undefined> {
  const text = await under.proxy.metrics.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

describe('recognising HTTP', () => {
  it('inspects a request preceded by empty lines, and every later request on that connection', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const client = await dial(under.registry, origin.port);
    try {
      const first = readUntil(client, (r) => r.toString().includes('secret\n'));
      client.write('\r\n\nGET /secret HTTP/1.1\r\nHost: origin.test\r\n\r\n');
      expect((await first).toString()).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
      const rest = readAll(client);
      client.end('GET /secret/two HTTP/1.1\r\nHost: origin.test\r\n\r\nGET /open HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n');
      const replies = (await rest).toString();
      expect(replies).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[^]*HTTP\/1\.1 200 OK\r\n[^]*served \/open$/);
      expect(origin.seen).toEqual(['GET /open']);
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'connection-kind', kind: 'http' }));
    } finally {
      client.destroy();
    }
  });

  it('refuses more empty lines before the request line than its bound with 400', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });

    const reply = await rawRequest(under.registry, origin.port, `${'\r\n'.repeat(5)}GET /open HTTP/1.1\r\nHost: origin.test\r\n\r\n`);

    expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(reply).toContain('Connection: close\r\n');
    expect(origin.seen).toEqual([]);
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'client-error', code: 'COPROXY_HTTP_LEADING_EMPTY_LINES', status: 400 }));
    // Four empty lines are within the bound.
    const fits = await rawRequest(under.registry, origin.port, `${'\r\n'.repeat(4)}GET /open HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n`);
    expect(fits).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*served \/open$/);
  });

  it('takes any method token as a method: M-SEARCH is parsed and inspected, not relayed', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });

    const blocked = await rawRequest(under.registry, origin.port, 'M-SEARCH /secret HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n');
    const served = await rawRequest(under.registry, origin.port, 'M-SEARCH /open HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n');

    expect(blocked).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(served).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*served \/open$/);
    expect(origin.seen).toEqual(['M-SEARCH /open']);
    expect(under.exchanges.map((x) => x.kind)).toEqual(['http', 'http']);
  });

  it('inspects a request whose first bytes come slower than the sniff timeout', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { rules: RULES, sniffTimeoutMs: 100 });
    const client = await dial(under.registry, origin.port);
    try {
      const reply = readAll(client);
      client.write('GE');
      await sleep(400);
      client.write('T /secret HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n');

      expect((await reply).toString()).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
      expect(origin.seen).toEqual([]);
      expect(origin.connections).toHaveLength(0);
    } finally {
      client.destroy();
    }
  });

  it('answers 408 to a client that starts a request and stalls, never relaying it', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { sniffTimeoutMs: 100, headersTimeoutMs: 400 });
    for (const start of ['G', '\r\n']) {
      const client = await dial(under.registry, origin.port);
      try {
        client.write(start);
        const reply = (await readAll(client, 5000)).toString();
        expect(reply).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
      } finally {
        client.destroy();
      }
    }
    expect(origin.connections).toHaveLength(0);
    expect(under.events.filter((e) => e.type === 'client-error')).toEqual([
      expect.objectContaining({ code: 'COPROXY_HTTP_REQUEST_TIMEOUT', status: 408 }),
      expect.objectContaining({ code: 'COPROXY_HTTP_REQUEST_TIMEOUT', status: 408 }),
    ]);
  });

  it('parses, and refuses, a request line after whitespace that a lenient origin might skip, even under the relay policy', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { rules: RULES, unrecognised: 'relay' });

    for (const start of [' ', '\t']) {
      const reply = await rawRequest(under.registry, origin.port, `${start}GET /secret HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n`);
      expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    }
    expect(origin.connections).toHaveLength(0);
    expect(under.events.filter((e) => e.type === 'unrecognised')).toEqual([]);
  });

  it('serves an HTTP/2 prior-knowledge preface as h2c (inspected per stream, never relayed); a preface that differs is refused', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port], { unrecognised: 'relay' });

    // The preface, then bytes that are no HTTP/2 frame: the session answers in HTTP/2 (SETTINGS, GOAWAY) and closes.
    const socket = await dial(under.registry, origin.port);
    let reply: Buffer;
    try {
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n');
      reply = await readAll(socket);
    } finally {
      socket.destroy();
    }
    expect(reply[3]).toBe(0x4); // a SETTINGS frame first
    expect(reply.toString('latin1')).not.toMatch(/^HTTP\/1/);
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'connection-kind', kind: 'http', protocol: 'h2c' }));

    // A preface that differs is left to the HTTP/1.1 parser, which refuses it: never relayed either.
    const broken = await rawRequest(under.registry, origin.port, 'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n');
    expect(broken).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(origin.connections).toHaveLength(0);
  });

  it('closes promptly a client that half-closes after the start of the preface (its end is not lost to the preface sniff)', async () => {
    await using origin = await startObservedOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await dial(under.registry, origin.port);
    try {
      socket.end('PRI * HT');
      const reply = (await readAll(socket, 5000)).toString('latin1');
      expect(reply).not.toMatch(/^HTTP\/1\.1 408/);
    } finally {
      socket.destroy();
    }
    expect(origin.connections).toHaveLength(0);
  });
});

describe('bytes that are not HTTP', () => {
  /** A TLS 1.2 record header announcing a 512-byte handshake message: a ClientHello (type 1) starts. */
  const TLS_START = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);

  it('relays a TLS record, which the next vendor in the chain may inspect, under the default policy', async () => {
    await using origin = await startEchoOrigin();
    await using under = await startProxy([origin.port]);
    const payload = Buffer.concat([TLS_START, Buffer.alloc(600, 0x42)]);
    const client = await dial(under.registry, origin.port);
    try {
      const echoed = readAll(client);
      client.end(payload);
      expect((await echoed).equals(payload)).toBe(true);
      expect(origin.received().equals(payload)).toBe(true);
      await until(() => under.exchanges.length === 1, 5000, 'the opaque exchange');
      expect(under.exchanges[0]).toMatchObject({ kind: 'opaque' });
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'connection-kind', kind: 'opaque', protocol: 'tls' }));
    } finally {
      client.destroy();
    }
  });

  it('blocks bytes it does not recognise by default: closed unread, logged as an event and a metric', async () => {
    await using origin = await startEchoOrigin();
    await using under = await startProxy([origin.port]);
    // Not TLS (a bad record length) and no byte a request could start with.
    for (const first of [Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00]), Buffer.from([0x00, 0x01, 0x02, 0x03]), Buffer.from([0xff, 0x47, 0x45, 0x54, 0x20])]) {
      const client = await dial(under.registry, origin.port);
      try {
        const reply = readAll(client);
        client.write(first);
        expect((await reply).length).toBe(0);
      } finally {
        client.destroy();
      }
    }
    expect(origin.sockets).toHaveLength(0);
    await until(() => under.events.filter((e) => e.type === 'unrecognised').length === 3, 5000, 'three unrecognised events');
    expect(under.events.filter((e) => e.type === 'unrecognised')).toEqual([
      expect.objectContaining({ action: 'block', reason: 'bytes', firstBytes: '160301ffff0100' }),
      expect.objectContaining({ action: 'block', reason: 'bytes', firstBytes: '00010203' }),
      expect.objectContaining({ action: 'block', reason: 'bytes', firstBytes: 'ff474554' + '20' }),
    ]);
    expect(await metric(under, 'coproxy_http_unrecognised_total{action="block"}')).toBe(3);
  });

  it('relays bytes it does not recognise when asked to, and counts them', async () => {
    await using origin = await startEchoOrigin();
    await using under = await startProxy([origin.port], { unrecognised: 'relay' });
    const payload = Buffer.from([0x00, 0x01, 0x02, 0x03, 0xfe, 0xff]);
    const client = await dial(under.registry, origin.port);
    try {
      const echoed = readAll(client);
      client.end(payload);
      expect((await echoed).equals(payload)).toBe(true);
    } finally {
      client.destroy();
    }
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'unrecognised', action: 'relay', reason: 'bytes' }));
    expect(await metric(under, 'coproxy_http_unrecognised_total{action="relay"}')).toBe(1);
  });

  it('closes a client silent for the sniff timeout by default, without dialling the origin', async () => {
    await using origin = await startEchoOrigin();
    await using under = await startProxy([origin.port], { sniffTimeoutMs: 100 });
    const client = await dial(under.registry, origin.port);
    try {
      expect((await readAll(client, 5000)).length).toBe(0);
    } finally {
      client.destroy();
    }
    expect(origin.sockets).toHaveLength(0);
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'unrecognised', action: 'block', reason: 'silent', firstBytes: '' }));
  });
});
