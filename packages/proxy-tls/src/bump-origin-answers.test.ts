import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { startProxy, startTlsOrigin, tempDir, testCa, until } from './test-support/harness.js';
import { h2Client, h2Request } from './test-support/h2-support.js';

/**
 * Adversarial: an HTTP/1.1 origin (one the client may run itself) answers what HTTP/1.1
 * allows but HTTP/2 does not. Converting it for an h2 client must fail that stream (502),
 * never the process that serves everyone.
 */
async function startStatusOrigin(ca: Parameters<typeof startTlsOrigin>[0]['ca'], head: string) {
  return startTlsOrigin({
    ca,
    ALPNProtocols: ['http/1.1'],
    onSession: (socket: tls.TLSSocket) => {
      let seen = '';
      socket.on('data', (chunk: Buffer) => {
        seen += chunk.toString('latin1');
        if (!seen.includes('\r\n\r\n')) return;
        seen = '';
        socket.write(`${head}\r\ncontent-length: 2\r\n\r\nok`);
      });
    },
  });
}

describe('bump: HTTP/1.1 answers HTTP/2 cannot carry', () => {
  for (const [what, head] of [
    ['a status above 599', 'HTTP/1.1 999 Odd'],
    ['a status below 100', 'HTTP/1.1 099 Odd'],
  ] as const) {
    it(`answers ${what} with a 502 on that stream, and the process serves on`, async () => {
      using originCa = await testCa('CN=odd origin CA');
      await using origin = await startStatusOrigin(originCa, head);
      using caDir = tempDir('coproxy-tls-proxy-ca-');
      await using proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
      const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
      await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);

      const answer = await h2Request(client.session, { ':method': 'GET', ':path': '/', ':authority': 'shop.example', ':scheme': 'https' }).catch((error: Error) => error);

      expect(answer instanceof Error ? answer.message : answer.status).toBe(502);
      await until(() => proxy.exchanges.length === 1, 5000, 'the exchange reported');
    });
  }
});
