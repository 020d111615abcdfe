import type net from 'node:net';
import { Writable } from 'node:stream';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseClientHello } from './client-hello.js';
import { ja3, ja4 } from './fingerprint.js';
import { GREASY_FIELDS, clientHello } from './test-support/hello-builder.js';
import { alertBytes, closed, dial, readExactly, readToEnd, startEchoOrigin, startProxy, startTcpOrigin, until } from './test-support/harness.js';

/** TLS alert access_denied (RFC 8446 §6.2). */
const ACCESS_DENIED = 49;

/** A raw origin that keeps, per accepted connection, every byte it received and whether it closed. */
async function startRecordingOrigin(): Promise<Awaited<ReturnType<typeof startTcpOrigin>> & { received: Buffer[]; ended: boolean[] }> {
  const received: Buffer[] = [];
  const ended: boolean[] = [];
  const origin = await startTcpOrigin((socket: net.Socket) => {
    const index = received.push(Buffer.alloc(0)) - 1;
    ended.push(false);
    socket.on('data', (chunk: Buffer) => (received[index] = Buffer.concat([received[index]!, chunk])));
    socket.on('close', () => (ended[index] = true));
  });
  return Object.assign(origin, { received, ended });
}

function helloFacts(bytes: Buffer): { ja3: string; ja3Text: string; ja4: string } {
  const result = parseClientHello(bytes);
  if (!result.done) throw new Error('no whole ClientHello in these bytes');
  const { text, hash } = ja3(result.hello);
  return { ja3: hash, ja3Text: text, ja4: ja4(result.hello) };
}

describe('earlyOnward: the onward connect in parallel with the hello', () => {
  it('has the origin connected before the client sends a byte, then splices the hello intact', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { earlyOnward: true });
    const hello = clientHello(GREASY_FIELDS);

    const client = await dial(proxy.registry, origin.port);
    await until(() => origin.sockets.length === 1, 5000, 'the onward connection, before any byte from the client');
    client.write(hello);

    expect(await readExactly(client, hello.length)).toEqual(hello);
    expect(proxy.handshakes).toEqual([expect.objectContaining({ action: 'splice' })]);
    expect(origin.sockets.length).toBe(1);
    client.destroy();
  });

  it('writes nothing to the origin for a blocked hello: the early connection closes empty, the client gets access_denied', async () => {
    await using origin = await startRecordingOrigin();
    await using proxy = await startProxy([origin.port], { earlyOnward: true, policy: { default: 'block' } });

    const client = await dial(proxy.registry, origin.port);
    await until(() => origin.sockets.length === 1, 5000, 'the early onward connection');
    client.write(clientHello(GREASY_FIELDS));
    const { bytes } = await readToEnd(client);

    expect(bytes).toEqual(alertBytes(ACCESS_DENIED));
    await until(() => origin.ended[0] === true, 5000, 'the early onward connection to close');
    expect(origin.received).toEqual([Buffer.alloc(0)]);
    expect(proxy.handshakes).toEqual([expect.objectContaining({ action: 'block' })]);
  });

  it('writes nothing to the origin for a malformed hello, a client that leaves at once, or unrecognised bytes', async () => {
    await using origin = await startRecordingOrigin();
    await using proxy = await startProxy([origin.port], { earlyOnward: true });

    const malformed = await dial(proxy.registry, origin.port);
    malformed.end(clientHello(GREASY_FIELDS).subarray(0, 60));
    await readToEnd(malformed);
    const leaving = await dial(proxy.registry, origin.port);
    leaving.end();
    await readToEnd(leaving);
    const other = await dial(proxy.registry, origin.port);
    other.write('SSH-2.0-OpenSSH_9.2\r\n');
    await readToEnd(other);

    await until(() => origin.ended.length === 3 && origin.ended.every(Boolean), 5000, 'the three early onward connections to close');
    expect(origin.received).toEqual([Buffer.alloc(0), Buffer.alloc(0), Buffer.alloc(0)]);
    await until(() => proxy.eventsOf('hello-rejected').length === 1 && proxy.eventsOf('unrecognised').length === 2, 5000, 'the events: the malformed hello and the SSH line unrecognised, the first rejected');
  });

  it('dials nothing before the hello by default: a blocked hello leaves the origin unaware', async () => {
    await using origin = await startRecordingOrigin();
    await using proxy = await startProxy([origin.port], { policy: { default: 'block' } });

    const client = await dial(proxy.registry, origin.port);
    client.write(clientHello(GREASY_FIELDS));
    expect((await readToEnd(client)).bytes).toEqual(alertBytes(ACCESS_DENIED));

    await closed(client);
    expect(origin.sockets).toEqual([]);
  });
});

describe('fingerprints, computed when read', () => {
  it('are in every handshake event and in its log line, as the hello’s JA3 and JA4, with no policy rule naming them', async () => {
    await using origin = await startEchoOrigin();
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString().split('\n').filter((line) => line !== ''));
        done();
      },
    });
    await using proxy = await startProxy([origin.port], { logger: pino({ level: 'info' }, sink) });
    const hello = clientHello(GREASY_FIELDS);

    const client = await dial(proxy.registry, origin.port);
    client.write(hello);
    await readExactly(client, hello.length);
    client.destroy();

    const expected = helloFacts(hello);
    expect(proxy.handshakes).toEqual([expect.objectContaining(expected)]);
    expect({ ...proxy.handshakes[0] }).toMatchObject(expected);
    await until(() => lines.some((line) => line.includes('"msg":"handshake"')), 5000, 'the handshake log line');
    const logged = JSON.parse(lines.find((line) => line.includes('"msg":"handshake"'))!) as { handshake: Record<string, unknown> };
    expect(logged.handshake).toMatchObject(expected);
  });
});
