import { describe, expect, it } from 'vitest';
import { GREASY_FIELDS, clientHello, ext, handshake, helloBody, tlsRecords } from './test-support/hello-builder.js';
import {
  type ProxyUnderTest,
  alertBytes,
  dial,
  randomPayload,
  readExactly,
  readToEnd,
  sha256,
  startEchoOrigin,
  startProxy,
  startTcpOrigin,
  until,
  writeApart,
} from './test-support/harness.js';

// A connection's first bytes sort three ways: TLS (inspected by the policy), another protocol
// coproxy-tls positively recognises (an HTTP/1.x request line, the HTTP/2 preface: relayed,
// since another vendor in the chain may inspect it), and anything else, which follows the
// `unrecognised` policy: block (the default) or relay, with a log line, a metric and an event.

/** TLS alert decode_error (RFC 8446 §6.2). */
const DECODE_ERROR = 50;

async function metricValues(proxy: ProxyUnderTest, name: 'unrecognised' | 'connections'): Promise<{ labels: object; value: number }[]> {
  return (await proxy.proxy.metrics[name].get()).values.map(({ labels, value }) => ({ labels, value }));
}

/** Sends `bytes`, half-closes, and returns everything that came back and how the connection ended. */
async function sendAll(proxy: ProxyUnderTest, port: number, bytes: Buffer): Promise<{ bytes: Buffer; error: NodeJS.ErrnoException | undefined }> {
  const client = await dial(proxy.registry, port);
  const reply = readToEnd(client);
  client.end(bytes);
  return reply;
}

/** A ServerHello where a ClientHello should be: record framing right, message wrong. */
const serverHelloFirst = (): Buffer => tlsRecords(handshake(helloBody(GREASY_FIELDS), 2));

describe('recognising a connection’s first bytes', () => {
  it('blocks bytes that are neither TLS nor a protocol it knows by default: closed without a byte, the origin never dialled, and said so', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);

    for (const bytes of [Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), Buffer.concat([Buffer.from([0x00]), randomPayload(5000)])]) {
      const result = await sendAll(proxy, origin.port, bytes);
      expect(result.bytes).toEqual(Buffer.alloc(0));
    }

    expect(origin.sockets).toEqual([]);
    await until(() => proxy.eventsOf('unrecognised').length === 2, 5000, 'two unrecognised events');
    const accepted = proxy.eventsOf('accepted').map((event) => event.connectionId);
    expect(proxy.eventsOf('unrecognised')).toEqual(
      accepted.map((connectionId) => ({ type: 'unrecognised', connectionId, action: 'block', reason: 'unknown' })),
    );
    expect(proxy.eventsOf('opaque')).toEqual([]);
    expect(await metricValues(proxy, 'unrecognised')).toEqual([{ labels: { action: 'block' }, value: 2 }]);
  });

  it('relays the same bytes unchanged when told unrecognised: relay, and says so', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { unrecognised: 'relay' });
    const bytes = Buffer.concat([Buffer.from([0xff]), randomPayload(200_000)]);

    const client = await dial(proxy.registry, origin.port);
    const back = readExactly(client, bytes.length);
    client.write(bytes);
    expect(sha256(await back)).toBe(sha256(bytes));
    client.destroy();

    await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
    expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'relay', reason: 'unknown' });
    expect(proxy.eventsOf('opaque')).toEqual([expect.objectContaining({ protocol: 'unrecognised' })]);
    expect(await metricValues(proxy, 'unrecognised')).toEqual([{ labels: { action: 'relay' }, value: 1 }]);
  });

  it('answers a stream that starts like TLS but is no ClientHello with a decode_error alert by default, and relays it with relay', async () => {
    await using origin = await startEchoOrigin();
    const bytes = serverHelloFirst();
    {
      await using proxy = await startProxy([origin.port]);
      const result = await sendAll(proxy, origin.port, bytes);
      expect(result.bytes).toEqual(alertBytes(DECODE_ERROR));
      await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
      expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'block', reason: 'malformed-tls', code: 'COPROXY_TLS_NOT_CLIENT_HELLO' });
      expect(proxy.eventsOf('hello-rejected')).toEqual([expect.objectContaining({ code: 'COPROXY_TLS_NOT_CLIENT_HELLO' })]);
      expect(origin.sockets).toEqual([]);
    }
    {
      await using proxy = await startProxy([origin.port], { unrecognised: 'relay' });
      const result = await sendAll(proxy, origin.port, bytes);
      expect(result.bytes).toEqual(bytes); // the echo origin got it unchanged
      await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
      expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'relay', reason: 'malformed-tls', code: 'COPROXY_TLS_NOT_CLIENT_HELLO' });
      expect(origin.sockets.length).toBe(1);
    }
  });

  it('closes without an alert a stream whose first byte is 22 but whose second is not a TLS version: it does not look like TLS', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);

    const result = await sendAll(proxy, origin.port, Buffer.concat([Buffer.from([0x16, 0x41]), randomPayload(300)]));

    expect(result.bytes).toEqual(Buffer.alloc(0));
    await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
    expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'block', reason: 'malformed-tls', code: 'COPROXY_TLS_BAD_RECORD' });
  });

  it('relays an HTTP/1.x request (any method token, after empty lines, sent slowly) and the HTTP/2 preface while it blocks the unrecognised', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { sniffTimeoutMs: 200 });
    const cases: [string, Buffer[], 'http1' | 'h2'][] = [
      ['GET', [Buffer.from('GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n')], 'http1'],
      ['M-SEARCH', [Buffer.from('M-SEARCH * HTTP/1.1\r\nHost: 239.255.255.250:1900\r\n\r\n')], 'http1'],
      ['an empty line first', [Buffer.from('\r\nGET /secret HTTP/1.1\r\nHost: a.test\r\n\r\n')], 'http1'],
      ['a bare LF ending', [Buffer.from("PUT!#$%&'*+.^_`|~ /x HTTP/1.0\nHost: a.test\n\n")], 'http1'],
      ['GE, a pause, then the rest', [Buffer.from('GE'), Buffer.from('T /slow HTTP/1.1\r\nHost: a.test\r\n\r\n')], 'http1'],
      ['the HTTP/2 preface', [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])], 'h2'],
    ];

    for (const [what, pieces, protocol] of cases) {
      const sent = Buffer.concat(pieces);
      const client = await dial(proxy.registry, origin.port);
      const back = readExactly(client, sent.length);
      client.write(pieces[0]!);
      // Longer than the sniff timeout: a started request line is not a silent client.
      if (pieces.length > 1) await new Promise((resolve) => setTimeout(resolve, 400));
      await writeApart(client, pieces.slice(1));
      expect({ what, back: (await back).toString('latin1') }).toEqual({ what, back: sent.toString('latin1') });
      client.destroy();
      await until(() => proxy.eventsOf('opaque').length === cases.indexOf(cases.find((c) => c[0] === what)!) + 1, 5000, `the relay of ${what}`);
      expect({ what, event: proxy.eventsOf('opaque').at(-1) }).toMatchObject({ what, event: { protocol } });
    }
    expect(proxy.eventsOf('unrecognised')).toEqual([]);
    expect(await metricValues(proxy, 'connections')).toEqual(
      expect.arrayContaining([
        { labels: { kind: 'http1' }, value: 5 },
        { labels: { kind: 'h2' }, value: 1 },
      ]),
    );
  });

  it('blocks what starts like a request line and turns out to be something else', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);
    const cases = [
      'GET / SMTP/1.0\r\n',
      'GET / HTTP/2.0\r\n', // not HTTP/1.x, and not the HTTP/2 preface either
      'GET\x00/ HTTP/1.1\r\n',
      'GET  / HTTP/1.1\r\n', // two spaces: an empty target
      'GET / HTTP/1.1\rX',
      'PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n',
    ];

    for (const text of cases) expect({ text, reply: (await sendAll(proxy, origin.port, Buffer.from(text, 'latin1'))).bytes.length }).toEqual({ text, reply: 0 });

    expect(origin.sockets).toEqual([]);
    await until(() => proxy.eventsOf('unrecognised').length === cases.length, 5000, 'the unrecognised events');
    expect(new Set(proxy.eventsOf('unrecognised').map((event) => `${event.action} ${event.reason}`))).toEqual(new Set(['block unknown']));
  });

  it('applies the policy to a silent client after the sniff timeout: closed by default, relayed to a server-first origin with relay', async () => {
    await using origin = await startTcpOrigin((socket) => socket.write('220 smtp.test ESMTP ready\r\n'));
    {
      await using proxy = await startProxy([origin.port], { sniffTimeoutMs: 200 });
      const client = await dial(proxy.registry, origin.port);
      const { bytes } = await readToEnd(client, 5000);
      expect(bytes).toEqual(Buffer.alloc(0));
      await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
      expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'block', reason: 'silent' });
      expect(origin.sockets).toEqual([]);
    }
    {
      await using proxy = await startProxy([origin.port], { sniffTimeoutMs: 200, unrecognised: 'relay' });
      const client = await dial(proxy.registry, origin.port);
      const banner = await readExactly(client, 27, 5000);
      expect(banner.toString()).toBe('220 smtp.test ESMTP ready\r\n');
      client.destroy();
      await until(() => proxy.eventsOf('unrecognised').length === 1, 5000, 'the unrecognised event');
      expect(proxy.eventsOf('unrecognised')[0]).toMatchObject({ action: 'relay', reason: 'silent' });
    }
  });

  it('never relays a ClientHello that stalls, even with relay: TLS is its own protocol, to inspect or refuse', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { unrecognised: 'relay', sniffTimeoutMs: 100, helloTimeoutMs: 300 });

    const client = await dial(proxy.registry, origin.port);
    client.write(clientHello(GREASY_FIELDS).subarray(0, 30));
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(Buffer.alloc(0));
    expect(origin.sockets).toEqual([]);
    await until(() => proxy.eventsOf('hello-rejected').length === 1, 5000, 'the rejection');
    expect(proxy.eventsOf('hello-rejected')[0]).toMatchObject({ code: 'COPROXY_TLS_HELLO_TIMEOUT' });
    expect(proxy.eventsOf('unrecognised')).toEqual([]);
  });
});

describe('unusual server names reach the policy as facts', () => {
  it('blocks a name written with a trailing dot by the rule on the name without it', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { policy: { rules: [{ name: 'no-blocked', when: { sni: 'blocked.example' }, action: 'block' }] } });

    const result = await sendAll(proxy, origin.port, clientHello({ extensions: [ext.serverName('Blocked.Example.')] }));

    expect(result.bytes).toEqual(alertBytes(49));
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake');
    expect(proxy.handshakes[0]).toMatchObject({ sni: 'blocked.example', sniAnomaly: 'trailing-dot', action: 'block', rule: 'no-blocked' });
  });

  it('splices unusual names by default, reported with their anomaly, and lets a rule on sniAnomaly decide', async () => {
    await using origin = await startEchoOrigin();
    const unusual = [
      clientHello({ extensions: [ext.serverName('a.example', 'b.example')] }),
      clientHello({ extensions: [ext.serverName('x'.repeat(300))] }),
      clientHello({ extensions: [ext.serverNameEntries({ type: 0, name: Buffer.from('bücher.example', 'utf8') })] }),
      clientHello({ extensions: [ext.raw(0x0000, Buffer.from([0, 0]))] }),
    ];
    {
      await using proxy = await startProxy([origin.port]);
      for (const hello of unusual) {
        const client = await dial(proxy.registry, origin.port);
        client.write(hello);
        expect(await readExactly(client, hello.length)).toEqual(hello);
        client.destroy();
      }
      await until(() => proxy.handshakes.length === unusual.length, 5000, 'the handshakes');
      expect(proxy.handshakes.map((h) => [h.sni, h.sniAnomaly, h.action])).toEqual([
        [undefined, 'multiple-names', 'splice'],
        [undefined, 'too-long', 'splice'],
        [undefined, 'invalid-name', 'splice'],
        [undefined, 'empty-list', 'splice'],
      ]);
      expect(proxy.eventsOf('hello-rejected')).toEqual([]);
    }
    {
      await using proxy = await startProxy([origin.port], {
        policy: { rules: [{ name: 'odd-names', when: { sniAnomaly: ['multiple-names', 'invalid-name'] }, action: 'block' }, { name: 'any-odd', when: { sniAnomaly: true }, action: 'splice' }] },
      });
      const replies = [];
      for (const hello of unusual) replies.push((await sendAll(proxy, origin.port, hello)).bytes);
      expect(replies.map((bytes, i) => (bytes.equals(alertBytes(49)) ? 'alert' : bytes.equals(unusual[i]!) ? 'echo' : 'other'))).toEqual(['alert', 'echo', 'alert', 'echo']);
      await until(() => proxy.handshakes.length === unusual.length, 5000, 'the handshakes');
      expect(proxy.handshakes.map((h) => h.rule)).toEqual(['odd-names', 'any-odd', 'odd-names', 'any-odd']);
    }
  });
});
