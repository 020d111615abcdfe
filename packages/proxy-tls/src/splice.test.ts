import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { type ClientHello, parseClientHello } from './client-hello.js';
import { ja3, ja4 } from './fingerprint.js';
import { GREASY_FIELDS, clientHello, ext, segments } from './test-support/hello-builder.js';
import {
  closed,
  dial,
  randomPayload,
  readExactly,
  readToEnd,
  sha256,
  startEchoOrigin,
  startProxy,
  startTcpOrigin,
  startTlsOrigin,
  tempDir,
  testCa,
  tlsClient,
  until,
  within,
  writeApart,
} from './test-support/harness.js';

const MiB = 1024 * 1024;

function helloOf(bytes: Buffer): { hello: ClientHello; consumed: number } {
  const result = parseClientHello(bytes);
  if (!result.done) throw new Error('no whole ClientHello in these bytes');
  return result;
}

describe('splice', () => {
  it('carries a TLS session byte for byte: the origin gets the client’s own records, and 4 MiB each way arrive intact', async () => {
    using originCa = await testCa('CN=splice origin CA');
    const toOrigin = randomPayload(4 * MiB);
    const toClient = randomPayload(4 * MiB);
    let originGot: Promise<Buffer> | undefined;
    await using origin = await startTlsOrigin({
      ca: originCa,
      ALPNProtocols: ['h2', 'http/1.1'],
      onSession: (session: tls.TLSSocket) => {
        originGot = readExactly(session, toOrigin.length);
        session.write(toClient);
      },
    });
    await using proxy = await startProxy([origin.port]);

    const { socket, tap } = await tlsClient(proxy.registry, origin.port, {
      servername: 'splice.example',
      ca: originCa.certPem,
      ALPNProtocols: ['h2', 'http/1.1'],
    });
    // The origin's own certificate and ALPN choice: nothing in between terminated TLS.
    expect(socket.authorized).toBe(true);
    expect(socket.getPeerCertificate().issuer.CN).toBe('splice origin CA');
    expect(socket.alpnProtocol).toBe('h2');
    socket.write(toOrigin);
    const received = await readExactly(socket, toClient.length);
    await until(() => originGot !== undefined, 5000, 'the origin session');
    const delivered = await originGot!;
    socket.end();
    await closed(socket, 10_000, 'the client to close');
    await closed(origin.taps[0]!, 10_000, 'the origin connection to close');
    await closed(tap, 10_000, 'the client connection to close');

    expect(sha256(received)).toBe(sha256(toClient));
    expect(sha256(delivered)).toBe(sha256(toOrigin));
    // Below TLS: every record the client wrote is what the origin read, and the reverse.
    expect(origin.taps.length).toBe(1);
    const originTap = origin.taps[0]!;
    expect({ bytes: originTap.received.bytes, sha256: originTap.received.digest() }).toEqual({ bytes: tap.sent.bytes, sha256: tap.sent.digest() });
    expect({ bytes: tap.received.bytes, sha256: tap.received.digest() }).toEqual({ bytes: originTap.sent.bytes, sha256: originTap.sent.digest() });
    expect(tap.sent.bytes).toBeGreaterThan(4 * MiB);
    // The client's own ClientHello is the first thing the origin saw.
    const { hello, consumed } = helloOf(tap.sent.head());
    expect(originTap.received.head().subarray(0, consumed)).toEqual(tap.sent.head().subarray(0, consumed));

    // What handshakes$ reported is what the captured hello says.
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    const fingerprint = ja3(hello);
    expect(proxy.handshakes[0]).toEqual({
      connectionId: expect.any(String) as string,
      destination: { address: '127.0.0.1', port: origin.port, family: 4 },
      redirectedBy: [proxy.id],
      sni: 'splice.example',
      alpn: ['h2', 'http/1.1'],
      supportedVersions: hello.supportedVersions,
      cipherSuites: hello.cipherSuites,
      ja3: fingerprint.hash,
      ja3Text: fingerprint.text,
      ja4: ja4(hello),
      ech: false,
      tlsRecordCount: 1,
      action: 'splice',
      rule: undefined,
    });
    expect(hello.supportedVersions).toContain(0x0304);
  });

  it('passes a hello on exactly as the client framed it, over three records and several TCP segments', async () => {
    const hello = clientHello(GREASY_FIELDS, { sizes: [20, 60, 1000] });
    const toOrigin = Buffer.concat([hello, randomPayload(MiB)]);
    const toClient = randomPayload(MiB);
    let originGot: Promise<Buffer> | undefined;
    await using origin = await startTcpOrigin((socket) => {
      originGot = readExactly(socket, toOrigin.length);
      socket.end(toClient);
    });
    await using proxy = await startProxy([origin.port]);

    const client = await dial(proxy.registry, origin.port);
    const reply = readToEnd(client);
    await writeApart(client, [...segments(hello, [3, 10, 40, 90]), toOrigin.subarray(hello.length)]);
    await until(() => originGot !== undefined, 5000, 'the origin connection');
    const delivered = await originGot!;
    client.end();
    const { bytes, error } = await reply;

    expect(error).toBeUndefined();
    expect(sha256(bytes)).toBe(sha256(toClient));
    expect(delivered.subarray(0, hello.length)).toEqual(hello);
    expect(sha256(delivered)).toBe(sha256(toOrigin));
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    const parsed = helloOf(hello).hello;
    expect(proxy.handshakes[0]).toMatchObject({ sni: 'greasy.example', tlsRecordCount: 3, ja3: ja3(parsed).hash, ja4: ja4(parsed), action: 'splice' });
  });

  it('reports an outer encrypted_client_hello with the public name as the SNI', async () => {
    const hello = clientHello({
      extensions: [
        ext.serverName('public.example'),
        ext.echOuter({ kdf: 1, aead: 1, configId: 3, enc: Buffer.alloc(32, 5), payload: Buffer.alloc(120, 6) }),
        ext.supportedVersions(0x0304),
      ],
    });
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port]);

    const client = await dial(proxy.registry, origin.port);
    client.write(hello);
    const echoed = await readExactly(client, hello.length);
    client.destroy();

    expect(echoed).toEqual(hello);
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    expect(proxy.handshakes[0]).toMatchObject({ sni: 'public.example', ech: true, action: 'splice' });
  });

  it('splices an encrypted ClientHello under a bump default when a policy rule on ech says so, and names the rule', async () => {
    const hello = clientHello({
      extensions: [
        ext.serverName('public.example'),
        ext.echOuter({ kdf: 1, aead: 1, configId: 9, enc: Buffer.alloc(32, 1), payload: Buffer.alloc(96, 2) }),
        ext.alpn('http/1.1'),
        ext.supportedVersions(0x0304),
      ],
    });
    await using origin = await startEchoOrigin();
    using caDir = tempDir('coproxy-tls-ech-ca-');
    await using proxy = await startProxy([origin.port], {
      policy: { default: 'bump', rules: [{ name: 'leave-ech-alone', when: { ech: true }, action: 'splice' }] },
      ca: { dir: caDir.path },
    });

    const client = await dial(proxy.registry, origin.port);
    client.write(hello);
    // Spliced: the origin (an echo) got the client's hello unchanged, no leaf was minted.
    expect(await readExactly(client, hello.length)).toEqual(hello);
    client.destroy();
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    expect(proxy.handshakes[0]).toMatchObject({ sni: 'public.example', ech: true, action: 'splice', rule: 'leave-ech-alone' });
    // The policy's own decision: nothing to note.
    expect(proxy.handshakes[0]).not.toHaveProperty('note');
  });

  it('passes traffic that is not TLS through byte for byte, reported as opaque, when told to relay the unrecognised', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { unrecognised: 'relay' });
    const payload = Buffer.concat([Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), randomPayload(2 * MiB)]);

    const client = await dial(proxy.registry, origin.port);
    const echoed = readExactly(client, payload.length);
    client.write(payload);
    const back = await echoed;
    client.end();
    await within(readToEnd(client), 10_000, 'the echo to end');

    expect(sha256(back)).toBe(sha256(payload));
    expect(origin.sockets.length).toBe(1);
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the connection to close');
    expect(proxy.eventsOf('opaque')).toEqual([expect.objectContaining({ type: 'opaque', connectionId: proxy.eventsOf('accepted')[0]?.connectionId })]);
    expect(proxy.handshakes).toEqual([]);
    expect(proxy.eventsOf('closed')[0]).toMatchObject({ bytesFromClient: payload.length, bytesToClient: payload.length });
  });
});
