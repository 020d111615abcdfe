import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { type ProxyUnderTest, type TempDir, startProxy, startTlsOrigin, tempDir, testCa, tlsClient, tlsClientError } from './test-support/harness.js';

// What bump's server side offers a client, read by clients that ask for one thing each:
// Mozilla's intermediate profile (tls-profile.ts), through a real bump to a real origin.

interface Bump extends AsyncDisposable {
  readonly proxy: ProxyUnderTest;
  /** Connects through the proxy as a client that trusts its CA, with these TLS options. */
  connect(options?: tls.ConnectionOptions): ReturnType<typeof tlsClient>;
  refused(options?: tls.ConnectionOptions): ReturnType<typeof tlsClientError>;
}

async function startBump(): Promise<Bump> {
  const originCa = await testCa('CN=profile origin CA');
  const origin = await startTlsOrigin({ ca: originCa, http: http.createServer((_req, res) => res.end('ok')) });
  const caDir: TempDir = tempDir('coproxy-tls-proxy-ca-');
  const proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
  const ca = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
  const base = { servername: 'profile.example', ca };
  return {
    proxy,
    connect: (options = {}) => tlsClient(proxy.registry, origin.port, { ...base, ...options }),
    refused: (options = {}) => tlsClientError(proxy.registry, origin.port, { ...base, ...options }),
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      await origin[Symbol.asyncDispose]();
      caDir[Symbol.dispose]();
      originCa[Symbol.dispose]();
    },
  };
}

/** A TLS 1.2 client offering only `ciphers` (OpenSSL names). */
const tls12 = (ciphers: string): tls.ConnectionOptions => ({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers });

/** OpenSSL's names for a handshake the server refused for want of a common suite, group or version. */
const REFUSED = /^ERR_SSL_(?:SSLV3_ALERT_HANDSHAKE_FAILURE|SSL\/TLS_ALERT_HANDSHAKE_FAILURE|TLSV1_ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|NO_PROTOCOLS_AVAILABLE)$/;

/**
 * The ticket_lifetime_hint of the TLS 1.2 NewSessionTicket the server sent, read off the
 * wire (RFC 5077 §3.3: it travels in the clear, before the server's ChangeCipherSpec).
 */
function ticketLifetimeHint(received: Buffer): number | undefined {
  let messages = Buffer.alloc(0);
  for (let at = 0; at + 5 <= received.length && received[at] === 22; at += 5 + received.readUInt16BE(at + 3)) {
    messages = Buffer.concat([messages, received.subarray(at + 5, at + 5 + received.readUInt16BE(at + 3))]);
  }
  for (let at = 0; at + 4 <= messages.length; at += 4 + messages.readUIntBE(at + 1, 3)) {
    if (messages[at] === 4) return messages.readUInt32BE(at + 4);
  }
  return undefined;
}

describe('the TLS bump offers clients (Mozilla intermediate)', () => {
  it('refuses TLS 1.1 and 1.0', async () => {
    await using bump = await startBump();
    // SECLEVEL 0: OpenSSL 3 would not even offer TLS 1.1 otherwise, and the point is what the server does.
    for (const version of ['TLSv1', 'TLSv1.1'] as const) {
      const error = await bump.refused({ minVersion: version, maxVersion: version, ciphers: 'DEFAULT:@SECLEVEL=0' });
      expect(error.code, version).toMatch(REFUSED);
    }
    expect(bump.proxy.exchanges).toEqual([]);
  });

  it('refuses a TLS 1.2 client that offers only CBC suites (SHA-1 or SHA-2 MACs), or no ECDHE', async () => {
    await using bump = await startBump();
    for (const ciphers of [
      'ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA',
      'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384',
      'AES128-GCM-SHA256:AES256-GCM-SHA384',
      'DHE-RSA-AES128-GCM-SHA256',
    ]) {
      const error = await bump.refused(tls12(ciphers));
      expect(error.code, ciphers).toMatch(REFUSED);
    }
  });

  it('accepts each ECDHE AEAD suite in TLS 1.2, and prefers its own order to the client’s', async () => {
    await using bump = await startBump();
    for (const suite of ['ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-ECDSA-CHACHA20-POLY1305']) {
      const { socket } = await bump.connect(tls12(suite));
      expect([socket.getProtocol(), socket.getCipher().name]).toEqual(['TLSv1.2', suite]);
      socket.destroy();
    }
    // The client lists ChaCha20 first and AES-128-GCM last; the server's order decides.
    const { socket } = await bump.connect(tls12('ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256'));
    expect(socket.getCipher().name).toBe('ECDHE-ECDSA-AES128-GCM-SHA256');
    socket.destroy();
  });

  it('speaks TLS 1.3 with its own suite order, to a client that lists AES-256 first', async () => {
    await using bump = await startBump();
    const { socket } = await bump.connect({ ciphers: 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256' });
    expect([socket.getProtocol(), socket.getCipher().name]).toEqual(['TLSv1.3', 'TLS_AES_128_GCM_SHA256']);
    socket.destroy();
  });

  it('agrees on X25519, P-256 or P-384 in its own order, and refuses a client with none of them', async () => {
    await using bump = await startBump();
    // TLS 1.3: the client's one key share, in each group the profile has.
    for (const [curve, name] of [
      ['X25519', 'X25519'],
      ['P-256', 'prime256v1'],
      ['P-384', 'secp384r1'],
    ] as const) {
      const { socket } = await bump.connect({ ecdhCurve: curve, minVersion: 'TLSv1.3' });
      expect(socket.getEphemeralKeyInfo(), curve).toMatchObject({ type: 'ECDH', name });
      socket.destroy();
    }
    // TLS 1.2: the server's order decides among the client's groups. (P-256 is always among
    // them: in TLS 1.2 supported_groups also names the curves of ECDSA certificates it takes.)
    for (const [curves, name] of [
      ['P-384:P-256:X25519', 'X25519'],
      ['P-521:P-384:P-256', 'prime256v1'],
    ] as const) {
      const { socket } = await bump.connect({ ...tls12('ECDHE-ECDSA-AES128-GCM-SHA256'), ecdhCurve: curves });
      expect(socket.getEphemeralKeyInfo(), curves).toMatchObject({ type: 'ECDH', name });
      socket.destroy();
    }
    const error = await bump.refused({ ecdhCurve: 'P-521:X448', minVersion: 'TLSv1.3' });
    expect(error.code).toMatch(REFUSED);
  });

  it('issues session tickets that last an hour, and resumes with them', async () => {
    await using bump = await startBump();
    const { socket, tap } = await bump.connect(tls12('ECDHE-ECDSA-AES128-GCM-SHA256'));
    expect(ticketLifetimeHint(tap.received.head())).toBe(3600);
    const session = socket.getSession();
    socket.destroy();
    expect(session).toBeDefined();

    const resumed = await bump.connect({ ...tls12('ECDHE-ECDSA-AES128-GCM-SHA256'), session: session! });
    expect(resumed.socket.isSessionReused()).toBe(true);
    resumed.socket.destroy();
  });
});
