import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ephemeralRange } from './ports.js';
import type { Report } from './scenario.js';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const skipKernel = process.env.COPROXY_SKIP_KERNEL_TESTS === '1' && process.env.CI !== 'true';
/** The HTML report is checked in Debian's headless Chromium; a developer without it may set COPROXY_SKIP_BROWSER_TESTS=1. */
const skipBrowser = process.env.COPROXY_SKIP_BROWSER_TESTS === '1' && process.env.CI !== 'true';

let dir: string;
/** What was left before these tests ran (a killed run elsewhere on a shared machine): not theirs to answer for. */
let before: Set<string>;
beforeAll(() => {
  before = new Set(leftovers());
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs the CLI as a user would; resolves with its exit code and output, never throws on a non-zero exit. */
async function testbed(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [cli, ...args], { timeout: 240_000, maxBuffer: 16 << 20 });
    return { code: 0, stdout };
  } catch (error) {
    const failed = error as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error; // killed by the timeout, or not started
    return { code: failed.code, stdout: `${failed.stdout ?? ''}${failed.stderr ?? ''}` };
  }
}

const readReport = (file: string): Report => JSON.parse(fs.readFileSync(file, 'utf8')) as Report;

/** What a run must leave behind: nothing (beyond what was there before). */
const leftBehind = (): string[] => leftovers().filter((entry) => !before.has(entry));

function leftovers(): string[] {
  const found: string[] = [];
  const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' });
  // Only the testbed's own processes: other packages' tests run vendor CLIs concurrently. The example
  // vendor's conformance tests run the testbed CLI (its ids and origin): turbo.json starts them after these.
  const ours = /proxy-(http|tls)\/dist\/cli\.js --id (tls|http)-vendor|testbed\/dist\/(origin|client)\.js/;
  for (const line of ps.split('\n')) if (ours.test(line)) found.push(`process: ${line.trim()}`);
  for (const entry of fs.readdirSync(os.tmpdir())) if (/^coproxy-testbed-(?!test-)/.test(entry)) found.push(`temp dir: ${entry}`);
  if (process.getuid?.() === 0) {
    for (const ns of execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n')) if (ns.startsWith('coproxy-testbed-')) found.push(`namespace: ${ns}`);
  }
  return found;
}

/** A listener of the test's own on 127.0.0.1:`port`. */
function hold(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

function expectCooperative(report: Report, vendors: number): void {
  expect(report.exitCode).toBe(0);
  expect(report.vendors).toHaveLength(vendors);
  const order = [...report.vendors].sort((a, b) => a.priority - b.priority).map((v) => v.id);
  for (const flow of report.flows) {
    expect(flow.problems).toEqual([]);
    expect(flow.hops.map((h) => h.vendor)).toEqual(order);
    expect(flow.hops.map((h) => h.state)).toEqual(order.map((_, i) => (i === 0 ? 'NotRedirected' : 'RedirectedByOther')));
    expect(flow.hops.at(-1)?.redirectedBy).toEqual(order);
    expect(flow.client?.ok).toBe(true);
    expect(flow.origin?.received).toBe(flow.client?.sent);
    expect(flow.origin?.sent).toBe(flow.client?.received);
  }
}

/** Every fourth flow is UDP: each vendor took it as a UDP flow, and its closed line counted every datagram both ways. */
function expectUdpFlows(report: Report, flows: number): void {
  const udp = report.flows.filter((f) => f.kind === 'udp');
  expect(udp).toHaveLength(flows);
  for (const flow of udp) {
    expect(flow.hops.map((h) => h.transport)).toEqual(report.vendors.map(() => 'udp'));
    expect(flow.hops.map((h) => h.datagrams)).toEqual(report.vendors.map(() => ({ fromClient: 8, toClient: 8 })));
    expect(flow.client?.receivedBytes).toBe(flow.client?.sentBytes);
    expect(flow.origin?.connections).toBe(1);
  }
  for (const flow of report.flows.filter((f) => f.kind !== 'udp')) expect(flow.hops.map((h) => h.transport)).toEqual(report.vendors.map(() => 'tcp'));
}

describe('coproxy-testbed', () => {
  it('demo on the embedded backend: cooperative run passes, the records-dropping run shows the loop', async () => {
    const json = path.join(dir, 'demo.json');
    const { code, stdout } = await testbed('demo', '--flows', '12', '--json', json);
    expect(code).toBe(0);
    expect(stdout).toContain('OK: every flow was accepted once by each of 2 vendors');
    expect(stdout).toContain('LOOP:');
    expectCooperative(readReport(path.join(dir, 'demo-cooperative.json')), 2);
    const dropped = readReport(path.join(dir, 'demo-dropped.json'));
    expect(dropped.exitCode).toBe(3);
    expect(dropped.loopDetected).toBe(true);
    // The vendor first in line inspected the flow again: it came back after the dropper.
    const first = [...dropped.vendors].sort((a, b) => a.priority - b.priority)[0]!;
    for (const flow of dropped.flows) expect(flow.hops.filter((h) => h.vendor === first.id).length).toBeGreaterThan(1);
    expect(leftBehind()).toEqual([]);
  });

  it('grows the chain to four vendors at seeded random priorities without loops, and writes an HTML page', async () => {
    const json = path.join(dir, 'four.json');
    const page = path.join(dir, 'four.html');
    const { code } = await testbed('run', '--vendors', 'tls,http,http,tls', '--flows', '9', '--seed', '7', '--json', json, '--html', page);
    expect(code).toBe(0);
    expectCooperative(readReport(json), 4);
    const html = fs.readFileSync(page, 'utf8');
    expect(html).toContain('coproxy testbed: OK');
    expect(html.match(/class="flow"/g)).toHaveLength(9);
    expect(leftBehind()).toEqual([]);
  });

  it.skipIf(skipBrowser)('renders the HTML report in headless Chromium', async () => {
    const page = path.join(dir, 'render.html');
    expect((await testbed('run', '--flows', '6', '--html', page)).code).toBe(0);
    const png = path.join(dir, 'render.png');
    // Flags that keep Chromium off the network and out of the user's profile.
    await run('chromium', [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', `--user-data-dir=${path.join(dir, 'chromium-profile')}`,
      '--window-size=1200,900', `--screenshot=${png}`, `file://${page}`,
    ], { timeout: 60_000 }).catch((error: Error) => {
      throw new Error(`chromium failed (apt-get install chromium, or COPROXY_SKIP_BROWSER_TESTS=1 on a developer machine): ${error.message}`, { cause: error });
    });
    const bytes = fs.readFileSync(png);
    expect(bytes.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    // A blank 1200x900 page compresses to a few hundred bytes; this one has text and boxes.
    expect(bytes.length).toBeGreaterThan(20_000);
  });

  it('demo --udp on the embedded backend: UDP flows through both vendors once each, as UDP flows with the records, every datagram intact; the loop still shows', async () => {
    const json = path.join(dir, 'udp-demo.json');
    const { code, stdout } = await testbed('demo', '--udp', '--flows', '8', '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = readReport(path.join(dir, 'udp-demo-cooperative.json'));
    expectCooperative(report, 2);
    expectUdpFlows(report, 2);
    const dropped = readReport(path.join(dir, 'udp-demo-dropped.json'));
    expect(dropped.exitCode).toBe(3);
    // The UDP flows loop too: the first vendor takes each one again after the dropper.
    const first = [...dropped.vendors].sort((a, b) => a.priority - b.priority)[0]!;
    for (const flow of dropped.flows.filter((f) => f.kind === 'udp')) expect(flow.hops.filter((h) => h.vendor === first.id).length).toBeGreaterThan(1);
    expect(leftBehind()).toEqual([]);
  });

  it('hands a --vendor command the UDP ports as {udpPorts}: coproxy-http started by hand takes the UDP flows after coproxy-tls', async () => {
    const httpCli = path.join(path.dirname(createRequire(import.meta.url).resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js');
    const json = path.join(dir, 'udp-command.json');
    const command = `${process.execPath} ${httpCli} --id {id} --priority {priority} --ports {ports} --udp-ports {udpPorts} --backend {backend} --fail-mode {failMode} --unrecognised relay --log-level warn`;
    const { code, stdout } = await testbed('run', '--udp', '--flows', '8', '--vendors', 'tls', '--vendor', command, '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = readReport(json);
    expectCooperative(report, 2);
    expectUdpFlows(report, 2);
    expect(leftBehind()).toEqual([]);
  });

  it.skipIf(skipKernel)('runs UDP flows on the nftables backend: a plain dgram client redirected by the kernel through both vendors', async () => {
    if (process.getuid?.() !== 0) throw new Error('the nftables run needs root; set COPROXY_SKIP_KERNEL_TESTS=1 to skip it on a developer machine');
    const json = path.join(dir, 'udp-nft.json');
    const { code, stdout } = await testbed('run', '--backend', 'nftables', '--udp', '--flows', '8', '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = readReport(json);
    expectCooperative(report, 2);
    expectUdpFlows(report, 2);
    expect(leftBehind()).toEqual([]);
  });

  it('exits 2 on a usage error', async () => {
    expect((await testbed('run', '--vendors', 'squid')).code).toBe(2);
    expect((await testbed('run', '--flows', '0')).code).toBe(2);
    expect((await testbed('run', '--flows', '10001')).code).toBe(2);
    expect((await testbed('run', '--origin-port-base', '80')).code).toBe(2);
  });

  it('runs 1,000 flows at concurrency 64, raw TCP included, with every origin port outside the kernel’s ephemeral range', { timeout: 240_000 }, async () => {
    // Before: --flows stopped at 600, a raw flow whose random bytes started with 22 got a
    // TLS alert (or with capitals and a space, a 400), and the ports fell in the ephemeral range.
    const json = path.join(dir, 'thousand.json');
    const { code, stdout } = await testbed('run', '--flows', '1000', '--concurrency', '64', '--seed', '1', '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = readReport(json);
    expectCooperative(report, 2);
    expect(report.flows.filter((f) => f.kind === 'tcp')).toHaveLength(333);
    const { range } = ephemeralRange();
    expect(report.flows.filter((f) => f.port >= range.from && f.port <= range.to).map((f) => f.port)).toEqual([]);
    expect(leftBehind()).toEqual([]);
  });

  it('replaces an origin port that another program holds, and says so', { timeout: 120_000 }, async () => {
    // Two ports of the block held by listeners of the test's own, outside the ephemeral range.
    const { range } = ephemeralRange();
    const base = range.from > 20_000 ? 17_000 + (process.pid % 2000) : range.to + 100;
    const held = await Promise.all([base + 1, base + 3].map((port) => hold(port)));
    try {
      const json = path.join(dir, 'replaced.json');
      const { code } = await testbed('run', '--flows', '6', '--origin-port-base', String(base), '--json', json);
      expect(code).toBe(0);
      const report = readReport(json);
      expectCooperative(report, 2);
      const ports = report.flows.map((f) => f.port);
      expect(ports).not.toContain(base + 1);
      expect(ports).not.toContain(base + 3);
      expect(ports.slice(0, 1)).toEqual([base]);
      expect(report.notes.filter((note) => /could not be bound \(EADDRINUSE\)/.test(note))).toHaveLength(2);
    } finally {
      await Promise.all(held.map((server) => new Promise((resolve) => server.close(resolve))));
    }
  });

  it.skipIf(skipKernel)('runs on the nftables backend in a namespace with unmodified curl, and leaves nothing behind', async () => {
    if (process.getuid?.() !== 0) throw new Error('the nftables run needs root; set COPROXY_SKIP_KERNEL_TESTS=1 to skip it on a developer machine');
    const json = path.join(dir, 'nft.json');
    const { code } = await testbed('run', '--backend', 'nftables', '--flows', '12', '--json', json);
    expect(code).toBe(0);
    const report = readReport(json);
    expectCooperative(report, 2);
    expect(report.flows.some((f) => f.viaCurl)).toBe(true);
    const { code: loopCode } = await testbed('run', '--backend', 'nftables', '--flows', '6', '--drop-records', 'http', '--json', json);
    expect(loopCode).toBe(3);
    expect(readReport(json).loopDetected).toBe(true);
    expect(leftBehind()).toEqual([]);
  });
});
