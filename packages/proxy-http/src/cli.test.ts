import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAgent } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { dial, readAll, request, startHttpOrigin, startTcpOrigin, tempDir, uniqueId, until, within } from './test-support/harness.js';

// The built CLI (dist/): vitest's global setup rebuilds it when stale.
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/**
 * How long the CLI may take to start or to stop: a hang guard, not a measure. On a 2-core
 * machine at load 18-22 a child process took over 10 s just to start.
 */
const START_MS = 30_000;

interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Running {
  readonly child: ChildProcess;
  /** Output so far. */
  readonly output: { stdout: string; stderr: string };
  readonly finished: Promise<Finished>;
}

function start(args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = { stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
  const finished = new Promise<Finished>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, ...output })));
  return { child, output, finished };
}

/** Runs the CLI to its end; kills it if it outlives `timeoutMs`. */
async function run(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = START_MS): Promise<Finished> {
  const running = start(args, env);
  try {
    return await within(running.finished, timeoutMs, `coproxy-http ${args.join(' ')}`);
  } finally {
    if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill('SIGKILL');
  }
}

const jsonLines = (text: string): Record<string, unknown>[] =>
  text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);

describe('coproxy-http (CLI)', { timeout: 120_000 }, () => {
  it('prints its usage for --help and exits 0', async () => {
    const result = await run(['--help']);

    expect(result.code).toBe(0);
    for (const option of ['--id', '--priority', '--backend', '--ports', '--rules', '--metrics']) expect(result.stdout).toContain(option);
  });

  it('exits 2 when the required --id is missing', async () => {
    const result = await run(['--priority', '1']);

    expect(result.code).toBe(2);
    expect(result.stderr).toContain("required option '--id <id>' not specified");
  });

  it('exits 2 for a usage error in an option value', async () => {
    const result = await run(['--id', 'x', '--priority', 'high']);

    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--priority');
  });

  it('exits 2 for an --unrecognised policy other than block or relay', async () => {
    const result = await run(['--id', 'x', '--priority', '1', '--unrecognised', 'allow']);

    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--unrecognised');
  });

  it('relays bytes it does not recognise with --unrecognised relay, and logs each such connection', async () => {
    using registry = tempDir('coproxy-http-registry-');
    await using echo = await startTcpOrigin((socket) => socket.pipe(socket));
    const running = start(['--id', uniqueId('cli'), '--priority', '5', '--ports', String(echo.port), '--unrecognised', 'relay'], { COPROXY_REGISTRY: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      const payload = Buffer.from([0x00, 0x01, 0x02, 0xff]);
      const client = await dial(registry.path, echo.port);
      const echoed = readAll(client);
      client.end(payload);
      expect((await echoed).equals(payload)).toBe(true);
      await until(() => running.output.stdout.includes('"msg":"unrecognised protocol"'), 5000, 'the unrecognised line');
      const line = jsonLines(running.output.stdout).find((l) => l.msg === 'unrecognised protocol');
      expect(line).toMatchObject({ action: 'relay', reason: 'bytes', firstBytes: '000102ff' });
      expect(jsonLines(running.output.stdout).find((l) => l.msg === 'ready')).toMatchObject({ unrecognised: 'relay' });
    } finally {
      running.child.kill('SIGTERM');
      await within(running.finished, START_MS, 'the CLI to exit');
    }
  });

  it('exits 2 for an invalid rule file, naming the file and where in it the problem is', async () => {
    using dir = tempDir();
    const rules = path.join(dir.path, 'rules.json');
    fs.writeFileSync(rules, JSON.stringify({ rules: [{ name: 'a', verdict: 'deny' }] }));

    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--rules', rules], { COPROXY_REGISTRY: dir.path });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain(rules);
    expect(result.stderr).toContain('rules[0].verdict');
  });

  it('serves requests on the embedded backend, logs JSON lines, and exits 0 on SIGTERM', async () => {
    using registry = tempDir('coproxy-http-registry-');
    await using origin = await startHttpOrigin((req, res) => res.end(`hello ${req.url ?? ''}`));
    const id = uniqueId('cli');
    // Port 0, read back from the ready line: a port found free beforehand may be bound by
    // another test (packages run in parallel) before the CLI binds it.
    const running = start(
      ['--id', id, '--priority', '5', '--ports', String(origin.port), '--backend', 'embedded', '--metrics', '127.0.0.1:0'],
      { COPROXY_REGISTRY: registry.path },
    );
    const agent = createAgent({ registry: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      expect(fs.readdirSync(registry.path)).toContain(`${id}.json`);
      const metricsPort = (jsonLines(running.output.stdout).find((line) => line.msg === 'ready')?.metrics as { port?: number } | undefined)?.port;
      expect(metricsPort).toBeGreaterThan(0);

      const response = await request({ agent, port: origin.port, path: '/through-cli' });
      expect([response.status, response.body.toString()]).toEqual([200, 'hello /through-cli']);
      const scraped = await within(
        new Promise<string>((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port: metricsPort, path: '/metrics' }, (res) => {
              let body = '';
              res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
              res.once('end', () => resolve(body));
            })
            .once('error', reject);
        }),
        5000,
        'the metrics endpoint',
      );
      expect(scraped).toContain('coproxy_http_requests_total{method="GET"} 1');
      await until(() => running.output.stdout.includes('"msg":"exchange"'), 5000, 'the exchange to be logged');

      running.child.kill('SIGTERM');
      const result = await within(running.finished, START_MS, 'the CLI to exit');

      expect(result).toMatchObject({ code: 0, signal: null, stderr: '' });
      // Every line is JSON; other lines (per connection, say) may come between these.
      const lines = jsonLines(result.stdout);
      const byMessage = (msg: string): Record<string, unknown>[] => lines.filter((line) => line.msg === msg);
      expect(lines.map((line) => line.msg).filter((msg) => ['ready', 'exchange', 'shutting down'].includes(msg as string))).toEqual([
        'ready',
        'exchange',
        'shutting down',
      ]);
      expect(lines.every((line) => line.service === 'coproxy-http' && line.id === id)).toBe(true);
      expect(byMessage('ready')[0]).toMatchObject({ backend: 'embedded' });
      expect(byMessage('exchange')[0]).toMatchObject({ exchange: { kind: 'http', request: { method: 'GET', url: '/through-cli' }, response: { status: 200 } } });
      expect(byMessage('shutting down')[0]).toMatchObject({ signal: 'SIGTERM' });
      // Its registry entry is gone: the next connection goes direct.
      expect(fs.readdirSync(registry.path).filter((name) => name.endsWith('.json'))).toEqual([]);
    } finally {
      agent.destroy();
      if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill('SIGKILL');
    }
  });
});
