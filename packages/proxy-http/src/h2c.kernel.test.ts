import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type { HttpExchange } from './events.js';
import { tempDir, until, within } from './test-support/harness.js';
import { NETNS_V4, NETNS_V6, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '@coproxy/core/testing';

// Real HTTP/2 clients with prior knowledge (curl, nghttp, h2load from Debian's
// nghttp2-client) through the coproxy-http CLI on the nftables backend, in a network
// namespace of the test's own, to an h2c origin (node:http2) there. The CLI runs dist/.
const fixtures = fileURLToPath(new URL('./test-support/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const ID = 'acme-h2c';
const PORT = 8080;
/**
 * How long a child (the origin, the CLI, curl) may take to start: a hang guard, not a
 * measure. On a 2-core machine at load 18-22 an origin took over 10 s to listen.
 */
const START_MS = 30_000;

interface Seen {
  readonly headers: Readonly<Record<string, string>>;
  readonly bytes: number;
  readonly local: string;
}

async function startOrigin(netns: Netns): Promise<Seen[]> {
  const received: Seen[] = [];
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'h2c-origin.mjs'), NETNS_V4, NETNS_V6, String(PORT)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; request?: Seen }) => {
      if (message.request !== undefined) received.push(message.request);
      if (message.ready === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the origin exited early with ${String(code)}`)));
  });
  await within(ready, START_MS, 'the origin to listen');
  return received;
}

function startCli(netns: Netns, args: readonly string[]): { child: ChildProcess; exchanges: HttpExchange[]; ready: Promise<void> } {
  const child = netns.spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exchanges: HttpExchange[] = [];
  let partial = '';
  let onReady: (() => void) | undefined;
  child.stdout?.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop() ?? '';
    for (const raw of lines) {
      const line = JSON.parse(raw) as { msg: string; exchange?: HttpExchange };
      if (line.msg === 'ready') onReady?.();
      if (line.exchange !== undefined) exchanges.push(line.exchange);
    }
  });
  const ready = new Promise<void>((resolve, reject) => {
    onReady = resolve;
    child.once('exit', (code) => reject(new Error(`the CLI exited before it was ready (${String(code)})`)));
  });
  return { child, exchanges, ready: within(ready, START_MS, 'the CLI to be ready') };
}

async function run(netns: Netns, command: string, args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = netns.spawn(command, [...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), START_MS + 15_000, command);
  return { code, stdout, stderr };
}

describe.skipIf(skipKernelTests)('h2c through the coproxy-http CLI on nftables, with real HTTP/2 clients', () => {
  beforeAll(assertKernelTestsCanRun);

  it('inspects each stream of curl, nghttp and h2load, blocks per stream, and the h2c origin answers the rest', async () => {
    await using netns = await createNetns('h2c');
    using dir = tempDir('coproxy-http-h2c-kernel-');
    const rules = path.join(dir.path, 'rules.json');
    fs.writeFileSync(rules, JSON.stringify({ rules: [{ name: 'no-admin', when: { path: '/admin/*' }, verdict: 'block', status: 451, reason: 'admin is off limits' }] }));
    const received = await startOrigin(netns);
    const proxy = startCli(netns, ['--id', ID, '--priority', '0', '--ports', String(PORT), '--backend', 'nftables', '--rules', rules, '--log-level', 'info']);
    await proxy.ready;
    const v4 = `http://${NETNS_V4}:${PORT}`;

    // curl with prior knowledge: allowed and blocked, each answered over HTTP/2.
    const curl = (url: string) => run(netns, 'curl', ['-sS', '--http2-prior-knowledge', '--max-time', '30', '--write-out', '\n%{http_version} %{http_code}', url]);
    const hello = await curl(`${v4}/hello`);
    expect(hello.stdout.split('\n').at(-1)).toBe('2 200');
    expect(JSON.parse(hello.stdout.split('\n')[0]!)).toMatchObject({ headers: { ':method': 'GET', ':path': '/hello', ':authority': `${NETNS_V4}:${PORT}` }, local: NETNS_V4 });
    const blocked = await curl(`http://[${NETNS_V6}]:${PORT}/admin/users`);
    expect(blocked.stdout).toBe('admin is off limits\n\n2 451');

    // nghttp: two streams on one connection, one blocked, its sibling answered.
    const nghttp = await run(netns, 'nghttp', ['-n', '--stat', `${v4}/a`, `${v4}/admin/b`]);
    expect(nghttp.code).toBe(0);
    expect(nghttp.stdout).toMatch(/200 .*\/a/);
    expect(nghttp.stdout).toMatch(/451 .*\/admin\/b/);

    // h2load: 200 requests, 16 streams at a time over 2 connections.
    const load = await run(netns, 'h2load', ['-n', '200', '-c', '2', '-m', '16', `${v4}/load`]);
    expect(load.stdout).toMatch(/requests: 200 total, 200 started, 200 done, 200 succeeded/);

    const paths = received.map((r) => r.headers[':path']);
    expect(paths.filter((p) => p === '/load')).toHaveLength(200);
    expect(paths.filter((p) => p?.startsWith('/admin'))).toEqual([]);
    expect(paths.filter((p) => p !== '/load')).toEqual(['/hello', '/a']);

    // The proxy saw every request, on its h2c streams.
    await until(() => proxy.exchanges.length === 204, 10_000, '204 exchange log lines');
    expect(proxy.exchanges.every((x) => x.protocol === 'h2c' && x.connection.redirectedBy.includes(ID))).toBe(true);
    expect(proxy.exchanges.filter((x) => x.decision?.action === 'block').map((x) => [x.request?.url, x.response?.status])).toEqual(
      expect.arrayContaining([
        ['/admin/users', 451],
        ['/admin/b', 451],
      ]),
    );
    proxy.child.kill('SIGTERM');
  }, 180_000);
});
