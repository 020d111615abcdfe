import type net from 'node:net';
import { refusingPort } from '@coproxy/core/testing';
import { describe, expect, it } from 'vitest';
import { GREASY_FIELDS, clientHello, ext } from './test-support/hello-builder.js';
import { type ProxyUnderTest, alertBytes, dial, readExactly, readToEnd, startEchoOrigin, startProxy, startTcpOrigin, until } from './test-support/harness.js';

/** TLS alert decode_error (RFC 8446 §6.2). */
const DECODE_ERROR = 50;

/** A well-formed hello through the proxy to an echo origin: it must come back whole. */
async function expectServes(proxy: ProxyUnderTest, port: number): Promise<void> {
  const hello = clientHello(GREASY_FIELDS);
  const client = await dial(proxy.registry, port);
  client.write(hello);
  expect(await readExactly(client, hello.length)).toEqual(hello);
  client.destroy();
}

/** The hello-rejected events so far, as [code, message] pairs. */
const rejections = (proxy: ProxyUnderTest): [string, string][] => proxy.eventsOf('hello-rejected').map((event) => [event.code, event.message]);

describe('faults', () => {
  it('answers a malformed hello with a decode_error alert and closes, then serves the next client', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);
    const duplicate = clientHello({ extensions: [ext.serverName('a.example'), ext.alpn('h2'), ext.serverName('b.example')] });

    const client = await dial(proxy.registry, origin.port);
    client.write(duplicate);
    const { bytes, error } = await readToEnd(client);

    expect(error).toBeUndefined();
    expect(bytes).toEqual(alertBytes(DECODE_ERROR));
    await until(() => rejections(proxy).length === 1, 5000, 'the rejection');
    expect(proxy.eventsOf('hello-rejected')[0]).toMatchObject({
      type: 'hello-rejected',
      connectionId: proxy.eventsOf('accepted')[0]?.connectionId,
      code: 'COPROXY_TLS_DUPLICATE_EXTENSION',
    });
    expect(rejections(proxy)[0]?.[1]).toContain('extension 0x0000 appears twice');
    expect(origin.sockets).toEqual([]);

    await expectServes(proxy, origin.port);
    expect(origin.sockets.length).toBe(1);
  });

  it('answers a hello cut short by the client’s FIN with a decode_error alert, then serves the next client', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);
    const hello = clientHello(GREASY_FIELDS);

    const client = await dial(proxy.registry, origin.port);
    client.end(hello.subarray(0, 60)); // half a hello, then the client closes its side
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(alertBytes(DECODE_ERROR));
    await until(() => rejections(proxy).length === 1, 5000, 'the rejection');
    expect(rejections(proxy)).toEqual([['COPROXY_TLS_MALFORMED', 'COPROXY_TLS_MALFORMED: the client closed in the middle of its ClientHello (at byte 60)']]);
    expect(origin.sockets).toEqual([]);
    await expectServes(proxy, origin.port);
  });

  it('closes a connection whose hello never completes within helloTimeoutMs, then serves the next client', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { helloTimeoutMs: 200 });
    const hello = clientHello(GREASY_FIELDS);

    const client = await dial(proxy.registry, origin.port);
    client.write(hello.subarray(0, 30)); // and nothing more
    const { bytes } = await readToEnd(client);

    // No alert: the client said nothing wrong, it just went quiet.
    expect(bytes).toEqual(Buffer.alloc(0));
    await until(() => rejections(proxy).length === 1, 5000, 'the rejection');
    expect(rejections(proxy)).toEqual([['COPROXY_TLS_HELLO_TIMEOUT', 'no complete ClientHello within 200 ms']]);
    expect(origin.sockets).toEqual([]);
    await expectServes(proxy, origin.port);
  });

  it('refuses a hello over maxHelloBytes with a decode_error alert', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { maxHelloBytes: 1000 });
    const big = clientHello({ extensions: [ext.serverName('big.example'), ext.raw(0x0015, Buffer.alloc(2000))] });

    const client = await dial(proxy.registry, origin.port);
    client.write(big);
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(alertBytes(DECODE_ERROR));
    await until(() => rejections(proxy).length === 1, 5000, 'the rejection');
    expect(rejections(proxy)[0]).toEqual(['COPROXY_TLS_TOO_LARGE', expect.stringContaining('exceeds 1000') as string]);
    await expectServes(proxy, origin.port);
  });

  it('reports an origin that resets the spliced connection, closes the client’s, then serves the next client', async () => {
    let resets = true;
    await using origin = await startTcpOrigin((socket: net.Socket) => {
      if (!resets) return void socket.pipe(socket);
      socket.once('data', () => socket.resetAndDestroy());
    });
    await using proxy = await startProxy([origin.port]);

    const client = await dial(proxy.registry, origin.port);
    client.write(clientHello(GREASY_FIELDS));
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(Buffer.alloc(0));
    await until(() => proxy.eventsOf('connection-failed').length === 1, 5000, 'the failure event');
    expect(proxy.eventsOf('connection-failed')[0]).toMatchObject({ code: 'ECONNRESET', connectionId: proxy.handshakes[0]?.connectionId });
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the client connection to close');

    resets = false;
    await expectServes(proxy, origin.port);
  });

  it('reports an origin that cannot be reached and closes the client’s connection', async () => {
    // An origin that is gone by the time the proxy connects onward: a port that refuses, held
    // so that no other test can be handed it meanwhile (a closed origin's port could be).
    await using gone = await refusingPort();
    const { port } = gone;
    await using proxy = await startProxy([port], { connectTimeoutMs: 5000 });

    const client = await dial(proxy.registry, port);
    client.write(clientHello(GREASY_FIELDS));
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(Buffer.alloc(0));
    await until(() => proxy.eventsOf('connection-failed').length === 1, 5000, 'the failure event');
    expect(proxy.eventsOf('connection-failed')[0]).toMatchObject({ code: 'ECONNREFUSED' });
    expect(proxy.eventsOf('onward-failed').length).toBe(1);
  });
});
