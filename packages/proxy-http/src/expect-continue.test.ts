import { createAgent } from '@coproxy/core';
import http from 'node:http';
import { describe, expect, it } from 'vitest';
import { digestOf, sha256, sleep, startHttpOrigin, startProxy, until, within } from './test-support/harness.js';

interface ContinueResult {
  readonly status: number;
  readonly body: string;
  /** Whether the client saw `100 Continue` before the final response. */
  readonly continued: boolean;
}

/** A POST with `Expect: 100-continue` whose body is sent only when the 100 arrives, as RFC 9110 §10.1.1 has it. */
function postExpectingContinue(agent: http.Agent, port: number, path: string, body: Buffer, log: string[]): Promise<ContinueResult> {
  const done = new Promise<ContinueResult>((resolve, reject) => {
    let continued = false;
    const req = http.request(
      { host: '127.0.0.1', port, method: 'POST', path, agent, headers: { expect: '100-continue', 'content-length': body.length } },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, body: text, continued }));
        res.once('error', reject);
      },
    );
    req.once('continue', () => {
      continued = true;
      log.push('client got 100');
      req.end(body);
    });
    req.once('error', reject);
    req.flushHeaders();
  });
  return within(done, 10_000, `POST ${path} with Expect: 100-continue`);
}

describe('Expect: 100-continue through the proxy', () => {
  it('gives the client 100 only once the origin sent it, and the body then reaches the origin', async () => {
    const log: string[] = [];
    await using origin = await startHttpOrigin((req, res) => {
      void digestOf(req).then((got) => res.end(`${got.bytes} ${got.sha256}`));
    });
    origin.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
      log.push('origin got the head');
      // A window in which a proxy answering 100 on its own would be caught out.
      void sleep(200).then(() => {
        log.push('origin sent 100');
        res.writeContinue();
        origin.server.emit('request', req, res);
      });
    });
    await using under = await startProxy([origin.port]);
    const agent = createAgent({ registry: under.registry });
    try {
      const body = Buffer.from('the body the client held back until it was told to go on');
      const result = await postExpectingContinue(agent, origin.port, '/upload', body, log);

      expect(result).toEqual({ status: 200, body: `${body.length} ${sha256(body)}`, continued: true });
      expect(log).toEqual(['origin got the head', 'origin sent 100', 'client got 100']);
      await until(() => under.exchanges.length === 1, 5000, 'the exchange');
      expect(under.exchanges[0]).toMatchObject({ request: { method: 'POST', headers: { expect: '100-continue' }, bodyBytes: body.length }, response: { status: 200 } });
    } finally {
      agent.destroy();
    }
  });

  it('answers a blocked request that expects 100-continue with its block status and no 100', async () => {
    const log: string[] = [];
    await using origin = await startHttpOrigin((_req, res) => res.end('should not be reached'));
    await using under = await startProxy([origin.port], {
      rules: { rules: [{ name: 'no-uploads', when: { path: '/upload' }, verdict: 'block', status: 413, reason: 'uploads are off' }] },
    });
    const agent = createAgent({ registry: under.registry });
    try {
      const result = await postExpectingContinue(agent, origin.port, '/upload', Buffer.alloc(1000, 0x62), log);

      expect(result).toEqual({ status: 413, body: 'uploads are off\n', continued: false });
      expect(log).toEqual([]);
      expect(origin.connections).toHaveLength(0);
      await until(() => under.exchanges.length === 1, 5000, 'the exchange');
      expect(under.exchanges[0]).toMatchObject({ decision: { action: 'block', status: 413, by: ['rule:no-uploads'] }, response: { status: 413 } });
    } finally {
      agent.destroy();
    }
  });
});
