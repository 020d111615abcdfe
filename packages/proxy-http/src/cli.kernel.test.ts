import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type { HttpExchange } from './events.js';
import { sha256, sleep, tempDir, until, within } from './test-support/harness.js';
import { NETNS_V4, NETNS_V6, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '@coproxy/core/testing';

// The CLI as an operator runs it, on the nftables backend: a separate process inside a
// network namespace of the test's own (unique name, removed with `await using` even when
// the test fails, every process in it killed), with an origin there too, and unmodified
// curl as the client. The CLI runs the built package (dist/).
const fixtures = fileURLToPath(new URL('./test-support/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const ID = 'acme-web';
const ORIGIN_PORT = 8080;
/** Not an inspected port, so scraping the metrics is not itself an exchange. */
const METRICS_PORT = 9464;
/**
 * How long a child (the origin, the CLI, curl) may take to start: a hang guard, not a
 * measure. On a 2-core machine at load 18-22 an origin took over 10 s to listen.
 */
const START_MS = 30_000;

/** What the origin reports of each request it received (test-support/echo-origin.mjs). */
interface OriginRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly bytes: number;
  readonly sha256: string;
  readonly local: string;
}

/** Starts the origin on the namespace's non-loopback addresses; returns the requests it receives, as they arrive. */
async function startOrigin(netns: Netns): Promise<OriginRequest[]> {
  const received: OriginRequest[] = [];
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'echo-origin.mjs'), NETNS_V4, NETNS_V6, String(ORIGIN_PORT)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; request?: OriginRequest }) => {
      if (message.request !== undefined) received.push(message.request);
      if (message.ready === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the origin exited early with ${String(code)}`)));
  });
  await within(ready, START_MS, 'the origin to listen');
  return received;
}

/** One JSON line the CLI logged (pino). */
interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly service?: string;
  readonly id?: string;
  readonly listening?: { readonly address: string; readonly port: number };
  readonly backend?: string;
  readonly signal?: string;
  readonly exchange?: HttpExchange;
}

interface CliProcess {
  readonly child: ChildProcess;
  /** Every stdout line, parsed, in order. */
  readonly lines: LogLine[];
  /** stdout lines that were not JSON. */
  readonly garbage: string[];
  /** The listener, from the CLI's `ready` line; rejects if it exits first. */
  readonly ready: Promise<{ address: string; port: number }>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exchanges(): HttpExchange[];
}

function startCli(netns: Netns, args: readonly string[]): CliProcess {
  const child = netns.spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  const garbage: string[] = [];
  let stderr = '';
  let partial = '';
  let onLine: ((line: LogLine) => void) | undefined;
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = partial + chunk.toString();
    const complete = text.split('\n');
    partial = complete.pop() ?? '';
    for (const raw of complete) {
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        garbage.push(raw); // asserted empty: logs are JSON lines only
        continue;
      }
      lines.push(line);
      onLine?.(line);
    }
  });
  // 'close', not 'exit': 'exit' may come before the last stdout lines are read.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal })),
  );
  const ready = new Promise<{ address: string; port: number }>((resolve, reject) => {
    onLine = (line) => {
      if (line.msg === 'ready' && line.listening !== undefined) resolve(line.listening);
    };
    void exited.then(({ code, signal }) => reject(new Error(`the CLI exited before it was ready (${String(code ?? signal)}): ${stderr.trim()}`)));
  });
  return {
    child,
    lines,
    garbage,
    ready: within(ready, START_MS, 'the CLI to be ready'),
    exited,
    exchanges: () => lines.flatMap((line) => (line.msg === 'exchange' && line.exchange !== undefined ? [line.exchange] : [])),
  };
}

interface CurlResult {
  /** curl's exit code: 0, 7 (connection refused), 22 (HTTP error with --fail), … */
  readonly exitCode: number | null;
  /** The HTTP status curl got; 0 when there was no response. */
  readonly status: number;
  readonly body: string;
  readonly stderr: string;
}

/** Unmodified curl inside the namespace; resolves whatever curl's exit code. */
async function curl(netns: Netns, url: string, extra: readonly string[] = []): Promise<CurlResult> {
  const child = netns.spawn('curl', ['-sS', '-g', '--max-time', '30', '--write-out', '\n%{http_code}', ...extra, url], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exitCode = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), START_MS + 15_000, `curl ${url}`);
  const cut = stdout.lastIndexOf('\n');
  return { exitCode, status: Number(stdout.slice(cut + 1)), body: stdout.slice(0, Math.max(cut, 0)), stderr };
}

/** The samples of a Prometheus text exposition, by `name{labels}`. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

/** Scrapes `/metrics` with curl in the namespace until `done` holds for the samples (at most 5 s). */
async function scrapeUntil(netns: Netns, done: (samples: Map<string, number>) => boolean, what: string): Promise<Map<string, number>> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const scraped = await curl(netns, `http://127.0.0.1:${METRICS_PORT}/metrics`);
    expect(scraped).toMatchObject({ exitCode: 0, status: 200 });
    const samples = parseMetrics(scraped.body);
    if (done(samples)) return samples;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the last scrape:\n${scraped.body}`);
    await sleep(50);
  }
}

async function nftTables(netns: Netns): Promise<string> {
  return (await netns.run('nft', ['list', 'tables'])).stdout;
}

describe.skipIf(skipKernelTests)('coproxy-http CLI on the nftables backend, in a network namespace', () => {
  beforeAll(assertKernelTestsCanRun);

  it('inspects unmodified curl by its rules, counts it in metrics and logs, and leaves no table after SIGTERM', async () => {
    await using netns = await createNetns('cli');
    using dir = tempDir('coproxy-http-kernel-');
    const rules = path.join(dir.path, 'rules.json');
    fs.writeFileSync(
      rules,
      JSON.stringify({
        rules: [
          { name: 'no-admin', when: { path: '/admin/*' }, verdict: 'block', status: 451, reason: 'admin is off limits' },
          { name: 'tag-mobile', when: { header: { name: 'x-client', matches: '^mobile/' } }, verdict: 'annotate', headers: { 'x-inspected-by': ID } },
          { name: 'rest', verdict: 'allow' },
        ],
      }),
    );
    const originReceived = await startOrigin(netns);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(ORIGIN_PORT), '--backend', 'nftables'],
      ...['--metrics', `127.0.0.1:${METRICS_PORT}`, '--rules', rules, '--log-level', 'info'],
    ]);
    const listening = await proxy.ready;
    expect(await nftTables(netns)).toContain(`table inet coproxy-${ID}`);
    const v4 = `http://${NETNS_V4}:${ORIGIN_PORT}`;
    const v6 = `http://[${NETNS_V6}]:${ORIGIN_PORT}`;

    // Allowed: the origin's answer reaches curl, and the request reached the origin as sent.
    const hello = await curl(netns, `${v4}/hello?lang=en`);
    expect(hello).toMatchObject({ exitCode: 0, status: 200 });
    const helloSeen = JSON.parse(hello.body) as OriginRequest;
    expect(helloSeen).toMatchObject({ method: 'GET', url: '/hello?lang=en', local: NETNS_V4, headers: { host: `${NETNS_V4}:${ORIGIN_PORT}` } });
    expect(helloSeen.headers).not.toHaveProperty('x-inspected-by');

    // A body streams through intact, over IPv6.
    const upload = randomBytes(256 * 1024);
    fs.writeFileSync(path.join(dir.path, 'upload.bin'), upload);
    const posted = await curl(netns, `${v6}/upload`, ['--data-binary', `@${path.join(dir.path, 'upload.bin')}`]);
    expect(posted).toMatchObject({ exitCode: 0, status: 200 });
    expect(JSON.parse(posted.body)).toMatchObject({ method: 'POST', url: '/upload', bytes: upload.length, sha256: sha256(upload), local: NETNS_V6 });

    // Blocked by a rule: the rule's status and reason, and the origin never sees it.
    const blocked = await curl(netns, `${v4}/admin/users`);
    expect(blocked).toEqual({ exitCode: 0, status: 451, body: 'admin is off limits\n', stderr: '' });
    const failed = await curl(netns, `${v4}/admin/users`, ['--fail']);
    expect(failed.exitCode).toBe(22); // curl --fail: the server answered with an HTTP error
    expect(failed.stderr).toContain('451');

    // Annotated by a rule: the header reached the origin, beside the client's own.
    const tagged = await curl(netns, `${v4}/api/items`, ['-H', 'x-client: mobile/3.1']);
    expect(tagged).toMatchObject({ exitCode: 0, status: 200 });
    expect((JSON.parse(tagged.body) as OriginRequest).headers).toMatchObject({ 'x-inspected-by': ID, 'x-client': 'mobile/3.1' });

    expect(originReceived.map((r) => `${r.method} ${r.url}`)).toEqual(['GET /hello?lang=en', 'POST /upload', 'GET /api/items']);

    // Metrics, scraped with curl once the five client connections have closed.
    const samples = await scrapeUntil(netns, (s) => s.get('coproxy_http_records_depth_count') === 5 && s.get('coproxy_http_open_connections') === 0, 'five closed connections');
    expect(Object.fromEntries([...samples].filter(([name]) => /^coproxy_http_(connections|requests|verdicts|errors)_total|_depth_(sum|count)$/.test(name)))).toEqual({
      'coproxy_http_connections_total{kind="http"}': 5,
      'coproxy_http_requests_total{method="GET"}': 4,
      'coproxy_http_requests_total{method="POST"}': 1,
      'coproxy_http_verdicts_total{verdict="allow"}': 2,
      'coproxy_http_verdicts_total{verdict="block"}': 2,
      'coproxy_http_verdicts_total{verdict="annotate"}': 1,
      coproxy_http_records_depth_sum: 5, // each flow redirected once, by this proxy
      coproxy_http_records_depth_count: 5,
    });
    expect(samples.get('coproxy_http_bytes_total{direction="from_client"}')).toBeGreaterThan(upload.length);

    // One JSON log line per exchange, naming the flow the kernel redirected.
    await until(() => proxy.exchanges().length === 5, 5000, 'five exchange log lines');
    expect(proxy.exchanges().map((x) => [x.request?.method, x.request?.url, x.response?.status, x.decision?.action, x.decision?.by])).toEqual([
      ['GET', '/hello?lang=en', 200, 'allow', ['rule:rest']],
      ['POST', '/upload', 200, 'allow', ['rule:rest']],
      ['GET', '/admin/users', 451, 'block', ['rule:no-admin']],
      ['GET', '/admin/users', 451, 'block', ['rule:no-admin']],
      ['GET', '/api/items', 200, 'annotate', ['rule:tag-mobile']],
    ]);
    expect(proxy.exchanges().map((x) => x.connection.destination.address)).toEqual([NETNS_V4, NETNS_V6, NETNS_V4, NETNS_V4, NETNS_V4]);
    for (const exchange of proxy.exchanges()) {
      expect(exchange).toMatchObject({ kind: 'http', sequence: 1, connection: { redirectedBy: [ID], destination: { port: ORIGIN_PORT } } });
    }
    expect(proxy.exchanges()[1]?.request?.bodyBytes).toBe(upload.length);
    expect(proxy.lines.filter((line) => line.msg === 'exchange').every((line) => line.level === 30 && line.service === 'coproxy-http' && line.id === ID)).toBe(true);
    expect(proxy.lines.find((line) => line.msg === 'ready')).toMatchObject({ backend: 'nftables', listening });

    // SIGTERM: a clean exit, and the redirect is gone with the process.
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 30_000, 'the CLI to exit after SIGTERM')).toEqual({ code: 0, signal: null });
    expect(proxy.lines.find((line) => line.msg === 'shutting down')).toMatchObject({ level: 30, signal: 'SIGTERM' });
    expect(await nftTables(netns)).not.toContain('coproxy-');
    expect((await curl(netns, `http://127.0.0.1:${listening.port}/`)).exitCode).toBe(7); // refused: nothing listens
    expect((await curl(netns, `http://127.0.0.1:${METRICS_PORT}/metrics`)).exitCode).toBe(7);
    // curl now reaches the origin directly: nothing blocks the admin path any more.
    const direct = await curl(netns, `${v4}/admin/users`);
    expect(direct).toMatchObject({ exitCode: 0, status: 200 });
    expect(originReceived.at(-1)).toMatchObject({ method: 'GET', url: '/admin/users' });
    expect(proxy.exchanges()).toHaveLength(5);
    expect(proxy.garbage).toEqual([]);
  }, 180_000);
});
