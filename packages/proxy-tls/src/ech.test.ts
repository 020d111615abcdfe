import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { clientHello, ext } from './test-support/hello-builder.js';
import { dial, startProxy, startTlsOrigin, tempDir, testCa, until, within } from './test-support/harness.js';

// An encrypted_client_hello extension (draft-ietf-tls-esni) is no reason not to bump:
// Chromium sends a GREASE one in every hello for a name without an ECH config, made to look
// like real ECH. Bump answers on the outer name; the policy can still leave ECH alone.

/** Chromium's GREASE ECH: HPKE suite (HKDF-SHA256, AES-128-GCM), a random config id, a 32-byte enc. */
const greaseEch = ext.echOuter({ kdf: 0x0001, aead: 0x0001, configId: 0x5c, enc: Buffer.alloc(32, 0xa5), payload: Buffer.alloc(208, 0x3c) });

/**
 * A TLS 1.2 hello that an OpenSSL server answers in the clear up to its Certificate:
 * ECDHE-ECDSA-AES128-GCM-SHA256 (the CA's leaves are P-256), X25519 and P-256, ECDSA-SHA256.
 */
const tls12Hello = (name: string): Buffer =>
  clientHello({
    cipherSuites: [0xc02b],
    extensions: [
      ext.serverName(name),
      ext.alpn('http/1.1'),
      ext.supportedGroups(0x001d, 0x0017),
      ext.ecPointFormats(0),
      ext.signatureAlgorithms(0x0403),
      greaseEch,
    ],
  });

/**
 * The first certificate of the server's TLS 1.2 flight, read off the wire: TLS records
 * (type 22) carry handshake messages; message type 11 is the Certificate (RFC 5246 §7.4.2).
 */
function firstCertificate(socket: net.Socket): Promise<X509Certificate> {
  const done = new Promise<X509Certificate>((resolve, reject) => {
    let records = Buffer.alloc(0);
    let messages = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      records = Buffer.concat([records, chunk]);
      while (records.length >= 5 && records.length >= 5 + records.readUInt16BE(3)) {
        const type = records[0];
        const length = records.readUInt16BE(3);
        if (type !== 22) return fail(new Error(`a TLS record of type ${String(type)} before the Certificate`));
        messages = Buffer.concat([messages, records.subarray(5, 5 + length)]);
        records = records.subarray(5 + length);
      }
      while (messages.length >= 4 && messages.length >= 4 + messages.readUIntBE(1, 3)) {
        const type = messages[0];
        const body = messages.subarray(4, 4 + messages.readUIntBE(1, 3));
        messages = messages.subarray(4 + body.length);
        if (type !== 11) continue;
        // certificate_list<3>, then each ASN.1Cert<3>.
        const first = body.subarray(6, 6 + body.readUIntBE(3, 3));
        socket.off('data', onData);
        return resolve(new X509Certificate(first));
      }
    };
    const fail = (error: Error): void => {
      socket.off('data', onData);
      reject(error);
    };
    socket.on('data', onData);
    socket.once('close', () => fail(new Error('closed before a Certificate')));
  });
  return within(done, 10_000, 'the server’s Certificate');
}

describe('ECH hellos', () => {
  it('bumps a hello with an encrypted_client_hello extension on its outer name, and says the hello carried ECH', async () => {
    using originCa = await testCa('CN=ech origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, ALPNProtocols: ['http/1.1'] });
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = new X509Certificate(fs.readFileSync(path.join(caDir.path, 'ca.crt')));

    const client = await dial(proxy.registry, origin.port);
    const certificate = firstCertificate(client);
    client.write(tls12Hello('public.example'));
    const leaf = await certificate;
    client.destroy();

    // The proxy's own leaf, minted for the outer name: a bump, where it used to be an alert.
    expect(leaf.subjectAltName).toBe('DNS:public.example');
    expect(leaf.checkIssued(proxyCa)).toBe(true);
    // The origin was asked for the same name, over a verified session of the proxy's own.
    await until(() => origin.sessions.length === 1, 5000, 'the origin session');
    expect(origin.sessions[0]?.servername).toBe('public.example');
    expect(proxy.handshakes).toEqual([expect.objectContaining({ sni: 'public.example', ech: true, action: 'bump', rule: undefined })]);
    expect(proxy.handshakes[0]).not.toHaveProperty('note');
  });

  it('bumps an ECH hello under unbumpable: splice too: that option is for ALPN lists bump cannot speak, not for ECH', async () => {
    using originCa = await testCa('CN=ech origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, ALPNProtocols: ['http/1.1'] });
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, unbumpable: 'splice', ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = new X509Certificate(fs.readFileSync(path.join(caDir.path, 'ca.crt')));

    const client = await dial(proxy.registry, origin.port);
    const certificate = firstCertificate(client);
    client.write(tls12Hello('public.example'));
    const leaf = await certificate;
    client.destroy();

    expect(leaf.checkIssued(proxyCa)).toBe(true);
    expect(proxy.handshakes).toEqual([expect.objectContaining({ sni: 'public.example', ech: true, action: 'bump' })]);
  });
});
