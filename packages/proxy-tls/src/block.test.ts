import { describe, expect, it } from 'vitest';
import { parseClientHello } from './client-hello.js';
import { ja3, ja4 } from './fingerprint.js';
import { captureNodeHello } from './test-support/capture.js';
import { GREASY_FIELDS, clientHello } from './test-support/hello-builder.js';
import { alertBytes, dial, readToEnd, startEchoOrigin, startProxy, startTlsOrigin, testCa, tlsClient, tlsClientError, until } from './test-support/harness.js';

/** TLS alert access_denied (RFC 8446 §6.2). */
const ACCESS_DENIED = 49;

describe('block', () => {
  it('answers a blocked hello with an access_denied alert and closes, and the origin never hears of it', async () => {
    using originCa = await testCa('CN=block origin CA');
    await using origin = await startTlsOrigin({ ca: originCa });
    await using proxy = await startProxy([origin.port], {
      policy: { rules: [{ name: 'no-blocked', when: { sni: '*.blocked.example' }, action: 'block' }] },
    });

    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'www.blocked.example', ca: originCa.certPem });

    expect(error.code).toBe('ERR_SSL_TLSV1_ALERT_ACCESS_DENIED');
    expect(origin.taps).toEqual([]);
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the connection to close');
    expect(proxy.handshakes).toEqual([expect.objectContaining({ sni: 'www.blocked.example', action: 'block', rule: 'no-blocked' })]);
    expect(proxy.eventsOf('onward-connected')).toEqual([]);
  });

  it('sends exactly one alert record, then the end of the stream', async () => {
    await using origin = await startEchoOrigin();
    await using proxy = await startProxy([origin.port], { policy: { default: 'block' } });

    const client = await dial(proxy.registry, origin.port);
    client.write(clientHello(GREASY_FIELDS));
    const { bytes, error } = await readToEnd(client);

    expect(error).toBeUndefined();
    expect(bytes).toEqual(alertBytes(ACCESS_DENIED));
    expect(origin.sockets).toEqual([]);
  });

  it('blocks by JA3 and JA4 as well as by name, and lets other clients through', async () => {
    using originCa = await testCa('CN=fingerprint origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, onSession: (session) => session.end('hello') });
    // Node's fingerprint with one set of options, captured beforehand; the same client without
    // ALPN (one extension fewer: both fingerprints change) still gets through.
    const captured = parseClientHello(await captureNodeHello({ servername: 'fp.example', ALPNProtocols: ['http/1.1'] }));
    if (!captured.done) throw new Error('no hello captured');
    const options = { servername: 'fp.example', ca: originCa.certPem };

    for (const when of [{ ja3: ja3(captured.hello).hash }, { ja4: ja4(captured.hello) }]) {
      await using proxy = await startProxy([origin.port], { policy: { rules: [{ name: 'that-client', when, action: 'block' }] } });

      const error = await tlsClientError(proxy.registry, origin.port, { ...options, ALPNProtocols: ['http/1.1'] });
      expect(error.code).toBe('ERR_SSL_TLSV1_ALERT_ACCESS_DENIED');
      const { socket } = await tlsClient(proxy.registry, origin.port, options);
      expect((await readToEnd(socket)).bytes.toString()).toBe('hello');

      expect(proxy.handshakes.map((h) => [h.action, h.rule])).toEqual([
        ['block', 'that-client'],
        ['splice', undefined],
      ]);
    }
  });
});
