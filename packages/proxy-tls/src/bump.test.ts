import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import type tls from 'node:tls';
import { createHttpsAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import type { CertificateAuthority } from './ca.js';
import { closed, startProxy, startTlsOrigin, tempDir, testCa, tlsClient, tlsClientError, until, within } from './test-support/harness.js';

/**
 * The code Node gives a TLS alert the peer sent: OpenSSL 3.0 (Node 20) names it
 * `ERR_SSL_SSLV3_ALERT_…`, OpenSSL 3.5 (Node 22, 24) `ERR_SSL_SSL/TLS_ALERT_…`.
 */
const alertCode = (alert: string): RegExp => new RegExp(`^ERR_SSL_SSL(?:V3|/TLS)_ALERT_${alert}$`);

/** What the origin saw of a request, as it answers it. */
interface Seen {
  readonly method: string;
  readonly url: string;
  readonly host: string | undefined;
  readonly bytes: number;
  readonly sni: string | false | null | undefined;
}

/** An HTTPS origin (certificates from `ca`) answering every request with what it saw, as JSON. */
async function startHttpsOrigin(ca: CertificateAuthority, certificateName?: string) {
  const requests: Seen[] = [];
  const server = http.createServer((req, res) => {
    let bytes = 0;
    req.on('data', (chunk: Buffer) => (bytes += chunk.length));
    req.on('end', () => {
      const seen: Seen = { method: req.method ?? '', url: req.url ?? '', host: req.headers.host, bytes, sni: (req.socket as tls.TLSSocket).servername };
      requests.push(seen);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(seen));
    });
  });
  const origin = await startTlsOrigin({ ca, http: server, ...(certificateName !== undefined && { certificateName }) });
  return Object.assign(origin, { requests });
}

interface Response {
  readonly status: number;
  readonly body: string;
  readonly certificate: tls.PeerCertificate;
}

function request(options: https.RequestOptions & { body?: Buffer }): Promise<Response> {
  const done = new Promise<Response>((resolve, reject) => {
    const req = https.request(options, (res) => {
      const certificate = (res.socket as tls.TLSSocket).getPeerCertificate();
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.once('error', reject);
      res.once('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), certificate }));
    });
    req.once('error', reject);
    req.end(options.body);
  });
  return within(done, 15_000, `${options.method ?? 'GET'} ${options.path ?? '/'}`);
}

describe('bump', () => {
  it('lets a client that trusts the proxy CA read the origin’s content, and reports each decrypted exchange', async () => {
    using originCa = await testCa('CN=bump origin CA');
    await using origin = await startHttpsOrigin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
    const agent = createHttpsAgent({ registry: proxy.registry, keepAlive: true, maxSockets: 1 });
    try {
      const base = { host: '127.0.0.1', port: origin.port, servername: 'shop.example', ca: proxyCa, agent, headers: { host: 'shop.example' } };

      const first = await request({ ...base, method: 'POST', path: '/cart?id=7', body: Buffer.alloc(1000, 1) });
      const second = await request({ ...base, method: 'GET', path: '/cart' });

      expect(first.status).toBe(200);
      expect(JSON.parse(first.body)).toEqual({ method: 'POST', url: '/cart?id=7', host: 'shop.example', bytes: 1000, sni: 'shop.example' });
      expect(JSON.parse(second.body)).toMatchObject({ method: 'GET', url: '/cart', bytes: 0, sni: 'shop.example' });
      // The client saw a leaf the proxy minted for the name it asked for.
      expect(first.certificate.issuer.CN).toBe('coproxy-tls local CA');
      expect(first.certificate.subjectaltname).toBe('DNS:shop.example');
      expect(new X509Certificate(first.certificate.raw).checkIssued(new X509Certificate(proxyCa))).toBe(true);

      await until(() => proxy.exchanges.length === 2, 5000, 'two exchanges');
      const connectionId = proxy.handshakes[0]?.connectionId;
      expect(proxy.handshakes).toEqual([expect.objectContaining({ sni: 'shop.example', action: 'bump', rule: undefined })]);
      expect(proxy.exchanges).toEqual([
        {
          connectionId,
          sni: 'shop.example',
          sequence: 1,
          protocols: { client: 'http/1.1', origin: 'http/1.1' },
          decision: { action: 'allow', by: [] },
          request: { method: 'POST', url: '/cart?id=7', host: 'shop.example', bodyBytes: 1000 },
          response: { status: 200, bodyBytes: Buffer.byteLength(first.body) },
        },
        {
          connectionId,
          sni: 'shop.example',
          sequence: 2,
          protocols: { client: 'http/1.1', origin: 'http/1.1' },
          decision: { action: 'allow', by: [] },
          request: { method: 'GET', url: '/cart', host: 'shop.example', bodyBytes: 0 },
          response: { status: 200, bodyBytes: Buffer.byteLength(second.body) },
        },
      ]);
      expect(origin.requests.length).toBe(2);
      expect((await proxy.proxy.metrics.exchanges.get()).values[0]?.value).toBe(2);
    } finally {
      agent.destroy();
    }
  });

  it('fails the verification of a client that does not trust the proxy CA, and nothing reaches the origin', async () => {
    using originCa = await testCa('CN=bump origin CA');
    await using origin = await startHttpsOrigin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });

    // It trusts the origin's CA, which does not help: the certificate it gets is the proxy's.
    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'shop.example', ca: originCa.certPem });

    expect(error.code).toBe('SELF_SIGNED_CERT_IN_CHAIN');
    // Node's client checks the chain after the handshake and just hangs up (no alert): the
    // proxy sees the connection close, and closes the origin's with it.
    await until(() => proxy.eventsOf('closed').length === 1, 5000, 'the connection to close');
    expect(origin.taps.length).toBe(1);
    await closed(origin.taps[0]!, 5000, 'the proxy to close its origin connection');
    expect(origin.requests).toEqual([]);
    expect(proxy.exchanges).toEqual([]);
  });

  it('refuses an origin whose certificate is for another name: origin-rejected, an alert for the client, never the content', async () => {
    using originCa = await testCa('CN=bump origin CA');
    await using origin = await startHttpsOrigin(originCa, 'somebody-else.example');
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));

    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });

    expect(error.code).toMatch(alertCode('BAD_CERTIFICATE'));
    expect(proxy.eventsOf('origin-rejected')).toEqual([expect.objectContaining({ code: 'ERR_TLS_CERT_ALTNAME_INVALID' })]);
    expect(origin.requests).toEqual([]);
  });

  it('refuses an origin whose certificate comes from a CA the proxy was not given', async () => {
    using originCa = await testCa('CN=bump origin CA');
    using otherCa = await testCa('CN=some other CA');
    await using origin = await startHttpsOrigin(originCa);
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: otherCa.certPem });
    const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));

    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa });

    expect(error.code).toMatch(alertCode('BAD_CERTIFICATE'));
    expect(proxy.eventsOf('origin-rejected')).toEqual([expect.objectContaining({ code: 'SELF_SIGNED_CERT_IN_CHAIN' })]);
    expect(origin.requests).toEqual([]);
  });

  it('closes the origin connection it opened when no leaf can be minted, and alerts the client', async () => {
    using originCa = await testCa('CN=bump origin CA');
    await using origin = await startHttpsOrigin(originCa);
    using proxyCa = await testCa('CN=broken proxy CA');
    proxyCa.contextFor = () => Promise.reject(Object.assign(new Error('cannot mint'), { code: 'MINT_FAILED' }));
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: proxyCa, originCa: originCa.certPem });

    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa.certPem });

    expect(error.code).toMatch(alertCode('HANDSHAKE_FAILURE'));
    expect(proxy.eventsOf('origin-rejected')).toEqual([expect.objectContaining({ code: 'MINT_FAILED', message: 'cannot mint' })]);
    // The origin connection was opened alongside the mint; it must not outlive the failure.
    await until(() => origin.taps.length === 1, 5000, 'the origin connection');
    await closed(origin.taps[0]!, 5000, 'the proxy to close its origin connection');
    expect(origin.requests).toEqual([]);
  });

  it('blocks a client that offers only protocols bump cannot speak, by default under a bump policy, and the origin never hears of it', async () => {
    using originCa = await testCa('CN=unbumpable origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, ALPNProtocols: ['grpc-exp', 'h2'], onSession: (session) => session.end('grpc bytes') });
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });

    const error = await tlsClientError(proxy.registry, origin.port, { servername: 'grpc.example', ca: originCa.certPem, ALPNProtocols: ['grpc-exp'] });

    expect(error.code).toMatch(/^ERR_SSL_(?:TLSV1|SSL\/TLS)_ALERT_ACCESS_DENIED$/);
    expect(origin.taps).toEqual([]);
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    expect(proxy.handshakes[0]).toMatchObject({ alpn: ['grpc-exp'], action: 'block', note: 'bump speaks ALPN h2 or http/1.1, the client offered only grpc-exp: blocked (unbumpable: block)' });
  });

  it('splices a client that offers only grpc-exp when the operator says unbumpable: splice, saying why in a note', async () => {
    using originCa = await testCa('CN=grpc origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, ALPNProtocols: ['grpc-exp', 'h2'], onSession: (session) => session.end('grpc bytes') });
    using caDir = tempDir('coproxy-tls-proxy-ca-');
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, unbumpable: 'splice', ca: { dir: caDir.path }, originCa: originCa.certPem });

    // The client trusts only the origin's CA: the handshake succeeds only if it reaches the origin.
    const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'grpc.example', ca: originCa.certPem, ALPNProtocols: ['grpc-exp'] });
    const body = await within(new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.once('end', () => resolve(text));
    }), 5000, 'the origin’s bytes');

    expect(socket.alpnProtocol).toBe('grpc-exp');
    expect(socket.getPeerCertificate().issuer.CN).toBe('grpc origin CA');
    expect(body).toBe('grpc bytes');
    await until(() => proxy.handshakes.length === 1, 5000, 'the handshake event');
    expect(proxy.handshakes[0]).toMatchObject({ alpn: ['grpc-exp'], action: 'splice', note: 'bump speaks ALPN h2 or http/1.1, the client offered only grpc-exp: spliced (unbumpable: splice)' });
  });

  it('mints one leaf per name and keeps at most cacheSize of them', async () => {
    using originCa = await testCa('CN=cache origin CA');
    await using origin = await startHttpsOrigin(originCa);
    using proxyCa = await testCa('CN=cache proxy CA', 1);
    await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: proxyCa, originCa: originCa.certPem });
    const serialFor = async (name: string): Promise<string> => {
      const { socket } = await tlsClient(proxy.registry, origin.port, { servername: name, ca: proxyCa.certPem });
      const serial = socket.getPeerCertificate().serialNumber;
      socket.destroy();
      return serial;
    };

    const a1 = await serialFor('a.example');
    const a2 = await serialFor('a.example');
    expect(proxyCa.cachedLeaves).toBe(1);
    const b = await serialFor('b.example');
    expect(proxyCa.cachedLeaves).toBe(1);
    const a3 = await serialFor('a.example'); // 'a' was dropped for 'b': minted again

    expect(a2).toBe(a1);
    expect(new Set([a1, b, a3]).size).toBe(3);
    expect(proxyCa.cachedLeaves).toBe(1);
  });
});
