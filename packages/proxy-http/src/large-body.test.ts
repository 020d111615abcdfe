import { type ChildProcess, fork } from 'node:child_process';
import http from 'node:http';
import { fileURLToPath } from 'node:url';
import { createAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { type GeneratedBody, digestOf, generatedBody, startHttpOrigin, tempDir, uniqueId, within } from './test-support/harness.js';

// The child runs the built package (dist/): vitest's global setup rebuilds it when stale.
const fixture = fileURLToPath(new URL('./test-support/proxy-process.mjs', import.meta.url));

const MiB = 1024 * 1024;
const BIG = 200 * MiB;
/** Generous: what a proxy that buffered the body would exceed many times over. */
const RSS_BOUND = 64 * MiB;

interface ProxyProcess extends AsyncDisposable {
  /** The proxy's resident set size now, in bytes. */
  rss(): Promise<number>;
}

async function startProxyProcess(options: Record<string, unknown>): Promise<ProxyProcess> {
  const child = fork(fixture, [JSON.stringify(options)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    try {
      await within(exited, 5000, 'the proxy process to exit');
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    }
  };
  try {
    await within(
      new Promise<void>((resolve, reject) => {
        child.on('message', (message: { ready?: number }) => message.ready !== undefined && resolve());
        child.once('exit', (code) => reject(new Error(`the proxy process exited with ${code} before it was ready`)));
      }),
      30_000, // a hang guard: a child took over 10 s to start at load 18-22
      'the proxy process to be ready',
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    rss: () => within(askRss(child), 5000, 'the proxy process to report its rss'),
    [Symbol.asyncDispose]: stop,
  };
}

function askRss(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    const onMessage = (message: { rss?: number }): void => {
      if (message.rss === undefined) return;
      child.off('message', onMessage);
      resolve(message.rss);
    };
    child.on('message', onMessage);
    child.send('rss');
  });
}

/** Samples the proxy's RSS until `work` settles; resolves with `work`'s value and the peak seen. */
async function whileSampling<TValue>(proxy: ProxyProcess, work: Promise<TValue>): Promise<{ value: TValue; peak: number }> {
  let done = false;
  let peak = 0;
  const sampler = (async () => {
    while (!done) {
      peak = Math.max(peak, await proxy.rss());
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  })();
  try {
    return { value: await work, peak: Math.max(peak, await proxy.rss()) };
  } finally {
    done = true;
    await sampler;
  }
}

/** A request whose response body is digested as it streams, never held whole. */
function streamingRequest(agent: http.Agent, port: number, method: string, path: string, body?: GeneratedBody): Promise<{ status: number; text: string; bytes: number; sha256: string }> {
  const done = new Promise<{ status: number; text: string; bytes: number; sha256: string }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent }, (res) => {
      // The small answers (a digest) are also kept as text.
      let text = '';
      res.on('data', (chunk: Buffer) => text.length < 200 && (text += chunk.toString('latin1')));
      digestOf(res).then((digest) => resolve({ status: res.statusCode ?? 0, text, ...digest }), reject);
    });
    req.once('error', reject);
    if (body === undefined) req.end();
    else body.stream.pipe(req);
  });
  // 200 MiB each way on a loaded 2-core machine: a hang guard, not a measure of throughput.
  return within(done, 60_000, `${method} ${path}`);
}

describe('a 200 MiB body through the proxy', () => {
  it('streams up and down intact while the proxy process stays within a bounded memory', { timeout: 180_000 }, async () => {
    using registry = tempDir('coproxy-http-registry-');
    const downloads: GeneratedBody[] = [];
    await using origin = await startHttpOrigin((req, res) => {
      const size = Number(new URL(req.url ?? '/', 'http://origin').searchParams.get('size') ?? 0);
      void digestOf(req).then(({ bytes, sha256 }) => {
        if (size === 0) return void res.end(`${bytes} ${sha256}`);
        const body = generatedBody(size);
        downloads.push(body);
        res.writeHead(200, { 'content-length': size });
        body.stream.pipe(res);
      });
    });
    await using proxy = await startProxyProcess({ id: uniqueId('big'), priority: 1, registry: registry.path, match: { ports: [origin.port] } });
    const agent = createAgent({ registry: registry.path, keepAlive: true, maxSockets: 1 });
    try {
      // Warm up every path (parser, agent, pipes) before taking the baseline.
      const warmUpload = generatedBody(4 * MiB);
      await streamingRequest(agent, origin.port, 'POST', '/warm', warmUpload);
      await streamingRequest(agent, origin.port, 'GET', `/warm?size=${4 * MiB}`);
      const baseline = await proxy.rss();

      const upload = generatedBody(BIG);
      const up = await whileSampling(proxy, streamingRequest(agent, origin.port, 'POST', '/upload', upload));
      const down = await whileSampling(proxy, streamingRequest(agent, origin.port, 'GET', `/download?size=${BIG}`));

      expect(up.value.status).toBe(200);
      expect(up.value.text).toBe(`${BIG} ${upload.sha256()}`);
      expect(down.value).toMatchObject({ status: 200, bytes: BIG, sha256: downloads.at(-1)?.sha256() });
      expect(origin.connections).toHaveLength(1);
      // In MiB, so a failure reads as the growth it saw.
      expect((up.peak - baseline) / MiB, 'RSS growth during the upload, MiB').toBeLessThan(RSS_BOUND / MiB);
      expect((down.peak - baseline) / MiB, 'RSS growth during the download, MiB').toBeLessThan(RSS_BOUND / MiB);
    } finally {
      agent.destroy();
    }
  });
});
