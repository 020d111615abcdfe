import fs from 'node:fs';
import path from 'node:path';
import type { Inspector, RequestInfo } from '@coproxy/core/vendor';
import { describe, expect, it } from 'vitest';
import { startProxy, tempDir, testCa, tlsClient, until, within } from './test-support/harness.js';
import { h2Client, h2Request, startHttpsOrigin } from './test-support/h2-support.js';

/**
 * Bump reads a request's host as coproxy-http does (core's `canonicalAuthority`), so a host
 * rule matches the same requests on both vendors, and forwards it in that form.
 */

async function scene() {
  const originCa = await testCa('CN=authority origin CA');
  const origin = await startHttpsOrigin(originCa, ['h2', 'http/1.1']);
  const caDir = tempDir('coproxy-tls-proxy-ca-');
  const seen: RequestInfo[] = [];
  const recorder: Inspector = { name: 'recorder', inspectRequest: (request) => void seen.push(request) };
  const proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [recorder] });
  const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
  return {
    origin,
    proxy,
    proxyCa,
    seen,
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      await origin[Symbol.asyncDispose]();
      caDir[Symbol.dispose]();
      originCa[Symbol.dispose]();
    },
  };
}

/** One HTTP/1.1 request with `host` as its Host line, on a new bumped connection: the status line. */
async function h1WithHost(s: Awaited<ReturnType<typeof scene>>, host: string): Promise<string> {
  const { socket } = await tlsClient(s.proxy.registry, s.origin.port, { servername: 'shop.example', ca: s.proxyCa, ALPNProtocols: ['http/1.1'] });
  socket.write(`GET /h1 HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  const text = await within(
    new Promise<string>((resolve) => {
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      socket.once('close', () => resolve(received));
    }),
    10_000,
    'the answer',
  );
  return text.split('\r\n')[0]!;
}

describe('bump reads hosts as coproxy-http does', () => {
  it.each([
    ['SHOP.Example.', 'shop.example', undefined, 'shop.example'],
    ['shop.example:443', 'shop.example', 443, 'shop.example:443'],
    ['Shop.Example.:443', 'shop.example', 443, 'shop.example:443'],
  ])('an h2 :authority %j is judged as host %j port %j, and forwarded as %j', async (authority, host, port, forwarded) => {
    await using s = await scene();
    await using client = await h2Client(s.proxy.registry, s.origin.port, 'shop.example', s.proxyCa);
    const answer = await h2Request(client.session, { ':method': 'GET', ':path': '/a', ':authority': authority, ':scheme': 'https' });
    expect(answer.status).toBe(200);
    expect(s.seen.map((r) => [r.host, r.port, r.authority])).toEqual([[host, port, forwarded]]);
    expect(s.origin.requests.map((r) => r.authority)).toEqual([forwarded]);
  });

  it.each(['user@shop.example', 'user:pw@shop.example', 'shop.example:', 'shop.example:99999', 'sh%6fp.example'])(
    'refuses an HTTP/1.1 Host %j with 400, before any inspector or the origin',
    async (host) => {
      await using s = await scene();
      expect(await h1WithHost(s, host)).toBe('HTTP/1.1 400 Bad Request');
      await until(() => s.proxy.exchanges.length === 1, 5000, 'the exchange');
      expect(s.proxy.exchanges[0]).toMatchObject({ response: { status: 400 }, error: { code: 'COPROXY_TLS_HTTP_PARSE' } });
      expect(s.seen).toEqual([]);
      expect(s.origin.requests).toEqual([]);
    },
  );

  it('reads an IPv6 Host in its canonical form: [0:0::1] is ::1, which the certificate for shop.example does not cover (421)', async () => {
    await using s = await scene();
    expect(await h1WithHost(s, '[0:0:0:0:0:0:0:1]:443')).toBe('HTTP/1.1 421 Misdirected Request');
    await until(() => s.proxy.exchanges.length === 1, 5000, 'the exchange');
    expect(s.proxy.exchanges[0]?.error?.message).toMatch(/^the request names ::1,/);
    expect(s.origin.requests).toEqual([]);
  });
});
