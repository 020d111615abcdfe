import fs from 'node:fs';
import path from 'node:path';
import { rulesInspector } from '@coproxy/core/vendor';
import { describe, expect, it } from 'vitest';
import { startProxy, tempDir, testCa, tlsClient, within } from './test-support/harness.js';
import { h2Client, h2Request, startHttpsOrigin } from './test-support/h2-support.js';

/**
 * Review: a `#` in a bumped request's target. The rules read `/admin#/../public` as
 * `/public` (the `#` is an ordinary byte to the path readings), while an origin that reads
 * the target as a URL (WHATWG `new URL`, Express's parseurl) cuts the fragment and routes
 * `/admin`. coproxy-http refuses a fragment in the target with 400; bump must not forward it.
 */

async function scene() {
  const originCa = await testCa('CN=fragment origin CA');
  const origin = await startHttpsOrigin(originCa, ['h2', 'http/1.1']);
  const caDir = tempDir('coproxy-tls-proxy-ca-');
  const rules = rulesInspector({ rules: [{ name: 'no-admin', when: { path: '/admin*' }, verdict: 'block', status: 403 }] });
  const proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem, inspectors: [rules] });
  const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
  return {
    origin,
    proxy,
    proxyCa,
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      await origin[Symbol.asyncDispose]();
      caDir[Symbol.dispose]();
      originCa[Symbol.dispose]();
    },
  };
}

describe('bump and a fragment in the request target (review)', () => {
  it('an h2 :path /admin#/../public reaches no origin (the origin would route /admin)', async () => {
    await using s = await scene();
    await using client = await h2Client(s.proxy.registry, s.origin.port, 'shop.example', s.proxyCa);
    const answer = await h2Request(client.session, { ':method': 'GET', ':path': '/admin#/../public', ':authority': 'shop.example', ':scheme': 'https' });
    expect(s.origin.requests.map((r) => new URL(r.path, 'https://shop.example').pathname)).toEqual([]);
    expect(answer.status).toBe(400);
  });

  it('an HTTP/1.1 GET /admin#/../public reaches no origin', async () => {
    await using s = await scene();
    const { socket } = await tlsClient(s.proxy.registry, s.origin.port, { servername: 'shop.example', ca: s.proxyCa, ALPNProtocols: ['http/1.1'] });
    socket.write('GET /admin#/../public HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n');
    const text = await within(
      new Promise<string>((resolve) => {
        let received = '';
        socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
        socket.once('close', () => resolve(received));
      }),
      10_000,
      'the answer',
    );
    expect(s.origin.requests.map((r) => new URL(r.path, 'https://shop.example').pathname)).toEqual([]);
    expect(text.split('\r\n')[0]).toBe('HTTP/1.1 400 Bad Request');
  });
});
