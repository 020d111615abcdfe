import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import type { ConnectionInfo, Inspector } from './inspector.js';
import { createParser } from './node-http-parser.js';
import { createHttpProxy } from './proxy.js';
import { rawRequest, startHttpOrigin, tempDir, uniqueId, within } from './test-support/harness.js';

// A full collection on demand, without starting the test process with --expose-gc.
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

/** Collects until every reference is gone or a few rounds have passed; returns how many are still alive. */
async function survivors(refs: readonly WeakRef<object>[]): Promise<number> {
  for (let round = 0; round < 10; round++) {
    // Finalizers and 'close' handlers of the last connections run on later ticks.
    await new Promise((resolve) => setImmediate(resolve));
    collect();
    if (refs.every((ref) => ref.deref() === undefined)) return 0;
  }
  return refs.filter((ref) => ref.deref() !== undefined).length;
}

const REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n', 'latin1');

describe('memory per connection', () => {
  it('lets a closed parser and what its handlers reach be collected; an unclosed one is held by the binding', async () => {
    // In a function of its own, so that no variable of the test's frame still points at the last owner.
    const parse = (close: boolean): WeakRef<object> => {
      const owner = { heads: 0 };
      const parser = createParser('request', 16_384, { onHead: () => (owner.heads++, false), onBody: () => undefined, onComplete: () => undefined });
      expect(parser.execute(REQUEST)).toBe(REQUEST.length);
      expect(owner.heads).toBe(1);
      if (close) parser.close();
      return new WeakRef(owner);
    };
    const held = Array.from({ length: 20 }, () => parse(false));
    const freed = Array.from({ length: 20 }, () => parse(true));

    expect(await survivors(freed)).toBe(0);
    // The control: Node's binding keeps a parser nobody closed, and its handlers' closures with it.
    expect(await survivors(held)).toBe(held.length);
  });

  it('refuses to parse with a closed parser, rather than touching freed memory', () => {
    const parser = createParser('request', 16_384, { onHead: () => false, onBody: () => undefined, onComplete: () => undefined });
    parser.close();
    parser.close(); // twice is harmless
    expect(() => parser.execute(REQUEST)).toThrow(/closed/);
    expect(() => parser.finish()).toThrow(/closed/);
  });

  it('reuses a parser given back clean: a new user gets its own kind, its own handlers, nothing of a message left half-parsed', () => {
    const first: string[] = [];
    const a = createParser('request', 16_384, {
      onBegin: () => first.push('begin'),
      onHead: (head) => (first.push(`head ${head.method}`), false),
      onBody: () => first.push('body'),
      onComplete: () => first.push('complete'),
    });
    expect(a.execute(Buffer.from('POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhalf', 'latin1'))).toBeGreaterThan(0);
    a.close();
    const seenByA = [...first];

    const second: string[] = [];
    // Several, so that one of them is the parser just given back, whichever the pool hands out.
    for (let i = 0; i < 3; i++) {
      const b = createParser('response', 16_384, {
        onHead: (head) => (second.push(`status ${head.status}`), false),
        onBody: (chunk) => second.push(`body ${chunk.toString('latin1')}`),
        onComplete: () => second.push('complete'),
      });
      const response = Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 'latin1');
      expect(b.execute(response)).toBe(response.length);
      b.close();
    }

    expect(second).toEqual(Array.from({ length: 3 }, () => ['status 200', 'body ok', 'complete']).flat());
    expect(first).toEqual(seenByA);
  });

  // 200 connections one after another: 12 s here at load 15, so a hang guard wider than the package's 30 s.
  it('keeps nothing of a connection once it closed: 200 requests with Connection: close leave no connection in memory', { timeout: 90_000 }, async () => {
    await using origin = await startHttpOrigin((_request, response) => response.end('ok'));
    using registry = tempDir('coproxy-http-registry-');
    // Each request's connection, as the inspectors see it: the connection keeps it as long as it lives.
    const connections: WeakRef<ConnectionInfo>[] = [];
    const watcher: Inspector = {
      name: 'watcher',
      inspectRequest: (request) => {
        connections.push(new WeakRef(request.connection));
        return { action: 'allow' };
      },
    };
    const proxy = createHttpProxy({ id: uniqueId('http'), priority: 1, match: { ports: [origin.port] }, registry: registry.path, inspectors: [watcher] });
    try {
      await within(proxy.listening(), 20_000, 'the proxy to listen');
      for (let i = 0; i < 200; i++) {
        const reply = await rawRequest(registry.path, origin.port, `GET /${i} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n`);
        expect(reply).toMatch(/^HTTP\/1\.1 200 /);
      }
      expect(connections.length).toBe(200);
      // The client has its answer before the proxy has closed both legs of the last connections;
      // on a loaded machine that can take longer than the collection rounds below. Closed first.
      for (const deadline = Date.now() + 5000; !/^coproxy_http_open_connections 0$/m.test(await proxy.metrics.text()); await new Promise((resolve) => setTimeout(resolve, 10))) {
        if (Date.now() > deadline) throw new Error('timed out waiting for every connection to close');
      }
      expect(await survivors(connections)).toBe(0);
    } finally {
      await proxy.close();
    }
  });
});
