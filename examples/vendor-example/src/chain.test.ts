import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { createAgent } from '@coproxy/core';
import { afterEach, describe, expect, it } from 'vitest';

// Every process is started from its built dist, as a user starts it: vitest's global setup
// rebuilds this package's; turbo builds the reference vendors before this test runs.
const require = createRequire(import.meta.url);
const cli = {
  'word-filter': fileURLToPath(new URL('../dist/cli.js', import.meta.url)),
  'coproxy-http': path.join(path.dirname(require.resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js'),
  'coproxy-tls': path.join(path.dirname(require.resolve('@coproxy/proxy-tls/package.json')), 'dist/cli.js'),
} as const;
type VendorName = keyof typeof cli;

type LogLine = { readonly msg?: string; readonly [field: string]: unknown };

interface Vendor {
  readonly id: string;
  readonly child: ChildProcess;
  readonly lines: LogLine[];
  readonly stderr: () => string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running: Vendor[] = [];
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const vendor of running.splice(0)) if (vendor.child.exitCode === null && vendor.child.signalCode === null) vendor.child.kill('SIGKILL');
  for (const cleanup of cleanups.splice(0)) cleanup();
});

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

async function until(predicate: () => boolean, what: string, timeoutMs = 60_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !predicate(); await new Promise((resolve) => setTimeout(resolve, 20))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
  }
}

/** Starts a vendor's CLI on the embedded backend and resolves once it logs `ready`. */
async function startVendor(name: VendorName, args: string[], registry: string): Promise<Vendor> {
  const id = uniqueId(name.replace('coproxy-', ''));
  const child = spawn(process.execPath, [cli[name], '--id', id, '--backend', 'embedded', ...args], {
    env: { ...process.env, COPROXY_REGISTRY: registry },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const lines: LogLine[] = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line) as LogLine));
  // 'close', not 'exit': after 'exit' the last stdout and stderr may still be unread.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal })),
  );
  const vendor = { id, child, lines, stderr: () => stderr, exited };
  running.push(vendor);
  await until(() => lines.some((line) => line.msg === 'ready') || child.exitCode !== null, `${name} to be ready`);
  if (child.exitCode !== null) throw new Error(`${name} exited ${child.exitCode}: ${stderr}`);
  return vendor;
}

/** What each vendor logged as `accepted`: the redirect layer's word on who redirected the flow. */
const accepted = (vendor: Vendor): LogLine[] => vendor.lines.filter((line) => line.msg === 'accepted');

function get(registry: string, port: number, urlPath: string): Promise<{ status: number; body: string } | { error: string }> {
  const agent = createAgent({ registry });
  cleanups.push(() => agent.destroy());
  return new Promise((resolve) => {
    http
      .get({ host: '127.0.0.1', port, path: urlPath, agent, headers: { connection: 'close' } }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .once('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
  });
}

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics' }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.once('end', () => resolve(body));
      })
      .once('error', reject);
  });
}

describe('the example vendor chained with the two reference vendors', () => {
  it('inspects a request once in each vendor, in priority order, blocks what its rule says, and loops nowhere', async () => {
    const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-example-'));
    cleanups.push(() => fs.rmSync(registry, { recursive: true, force: true }));
    const seenByOrigin: string[] = [];
    const origin = http.createServer((req, res) => {
      seenByOrigin.push(req.url ?? '');
      res.end(`hello ${req.url ?? ''}`);
    });
    await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => origin.close());
    const port = String((origin.address() as net.AddressInfo).port);

    // Lower priority runs first: the word filter, then the HTTP vendor, then the TLS vendor.
    // Metrics on port 0, read back from the ready line: a port picked free beforehand could be
    // bound by another package's test (they run in parallel) before the filter binds it.
    const filter = await startVendor('word-filter', ['--priority', '5', '--ports', port, '--word', 'forbidden', '--metrics', '127.0.0.1:0'], registry);
    const metricsPort = (filter.lines.find((line) => line.msg === 'ready')?.metrics as { port?: number } | undefined)?.port;
    expect(metricsPort).toBeGreaterThan(0);
    const httpVendor = await startVendor('coproxy-http', ['--priority', '10', '--ports', port], registry);
    const tlsVendor = await startVendor('coproxy-tls', ['--priority', '20', '--ports', port], registry);
    const vendors = [filter, httpVendor, tlsVendor];

    // Through all three: each accepts the flow once, and its records grow by one each hop.
    expect(await get(registry, Number(port), '/hello')).toEqual({ status: 200, body: 'hello /hello' });
    await until(() => vendors.every((vendor) => accepted(vendor).length === 1), 'one accepted line per vendor');
    expect(vendors.map((vendor) => accepted(vendor)[0]?.redirectedBy)).toEqual([
      [filter.id],
      [filter.id, httpVendor.id],
      [filter.id, httpVendor.id, tlsVendor.id],
    ]);
    expect(vendors.map((vendor) => accepted(vendor)[0]?.state)).toEqual(['NotRedirected', 'RedirectedByOther', 'RedirectedByOther']);
    // pino writes asynchronously: the filter's inspected line (logged after its accepted line)
    // may reach us after the client has its answer and the other vendors' lines.
    await until(() => filter.lines.some((line) => line.msg === 'inspected'), 'the filter\'s inspected line');
    expect(filter.lines.find((line) => line.msg === 'inspected')).toMatchObject({ verdict: 'pass' });
    // coproxy-http logs an exchange once its response has gone out, which may be just after the client has it.
    await until(() => httpVendor.lines.some((line) => line.msg === 'exchange'), 'coproxy-http\'s exchange line');
    expect(httpVendor.lines.find((line) => line.msg === 'exchange')).toMatchObject({ exchange: { request: { url: '/hello' }, response: { status: 200 } } });
    expect(seenByOrigin).toEqual(['/hello']);

    // The word in the first bytes: the filter closes the flow; nobody after it sees it.
    const blocked = await get(registry, Number(port), '/forbidden/page');
    expect(blocked).toHaveProperty('error');
    await until(() => filter.lines.filter((line) => line.msg === 'inspected').length === 2, 'the second inspection');
    expect(filter.lines.filter((line) => line.msg === 'inspected').map((line) => line.verdict)).toEqual(['pass', 'block']);
    expect(vendors.map((vendor) => accepted(vendor).length)).toEqual([2, 1, 1]);
    expect(seenByOrigin).toEqual(['/hello']);

    // What an operator scrapes from the example: the kit's redirector metrics and its own.
    const metrics = await scrape(metricsPort!);
    expect(metrics).toContain('word_filter_flows_total{verdict="pass"} 1');
    expect(metrics).toContain('word_filter_flows_total{verdict="block"} 1');
    expect(metrics).toContain('word_filter_accepted_total{state="NotRedirected"} 2');
    expect(metrics).toContain('word_filter_records_depth_count 2');

    // SIGTERM: every vendor stops cleanly and takes its redirect with it.
    for (const vendor of vendors) vendor.child.kill('SIGTERM');
    const exits = await Promise.all(vendors.map((vendor) => vendor.exited));
    expect(exits).toEqual(vendors.map(() => ({ code: 0, signal: null })));
    expect(vendors.map((vendor) => vendor.stderr())).toEqual(['', '', '']);
    expect(fs.readdirSync(registry).filter((name) => name.endsWith('.json'))).toEqual([]);
  });

  it('exits 2 for an empty word, with its own prefixed error', async () => {
    const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-example-'));
    cleanups.push(() => fs.rmSync(registry, { recursive: true, force: true }));
    const child = spawn(process.execPath, [cli['word-filter'], '--id', uniqueId('wf'), '--priority', '1', '--word', ''], {
      env: { ...process.env, COPROXY_REGISTRY: registry },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));

    expect(code).toBe(2);
    expect(stderr).toBe('word-filter: --word: must not be empty\n');
  });
});

describe('the "Write your own vendor" page', () => {
  it('shows the code that runs, verbatim', () => {
    const readme = fs.readFileSync(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8');
    for (const file of ['word-filter.ts', 'cli.ts']) {
      expect(readme).toContain(fs.readFileSync(fileURLToPath(new URL(`./${file}`, import.meta.url)), 'utf8'));
    }
  });
});
