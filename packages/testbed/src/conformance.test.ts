import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConformanceReport } from './conformance.js';
import type { Report } from './scenario.js';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const brokenVendor = fileURLToPath(new URL('../dist/test-fixtures/broken-vendor.js', import.meta.url));
const httpCli = path.join(path.dirname(createRequire(import.meta.url).resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js');
/** The parameters every vendor command gets, as the README documents them. */
const PARAMETERS = '--id {id} --priority {priority} --ports {ports} --backend {backend} --fail-mode {failMode}';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Runs the CLI as a user would; resolves with its exit code and output, never throws on a non-zero exit. */
async function testbed(...args: string[]): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run(process.execPath, [cli, ...args], { timeout: 110_000, maxBuffer: 16 << 20 });
    return { code: 0, stdout };
  } catch (error) {
    const failed = error as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    return { code: failed.code, stdout: `${failed.stdout ?? ''}${failed.stderr ?? ''}` };
  }
}

const readJson = <TValue>(file: string): TValue => JSON.parse(fs.readFileSync(file, 'utf8')) as TValue;

describe('coproxy-testbed run --vendor', () => {
  it('starts any command as a vendor, in start order among the built-ins, and learns what it accepted from core’s event log', async () => {
    const json = path.join(dir, 'command.json');
    // coproxy-http started as a third party would start it: its own CLI, the testbed's
    // parameters once as placeholders and once from the environment.
    const byPlaceholders = `${process.execPath} ${httpCli} ${PARAMETERS} --unrecognised relay`;
    const byEnvironment = `${process.execPath} ${httpCli} --id "$COPROXY_VENDOR_ID" --priority "$COPROXY_VENDOR_PRIORITY" --ports "$COPROXY_VENDOR_PORTS" --backend "$COPROXY_VENDOR_BACKEND" --unrecognised relay`;
    const { code, stdout } = await testbed('run', '--vendor', byPlaceholders, '--vendors', 'tls', '--vendor', byEnvironment, '--flows', '6', '--seed', '3', '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = readJson<Report>(json);
    expect(report.vendors.map((v) => [v.id, v.kind])).toEqual([['vendor-1', 'command'], ['tls-vendor', 'tls'], ['vendor-2', 'command']]);
    const order = [...report.vendors].sort((a, b) => a.priority - b.priority).map((v) => v.id);
    for (const flow of report.flows) {
      expect(flow.problems).toEqual([]);
      expect(flow.hops.map((h) => h.vendor)).toEqual(order);
      expect(flow.hops.at(-1)?.redirectedBy).toEqual(order);
    }
  });

  it('says why when a vendor command never becomes ready', async () => {
    const { code, stdout } = await testbed('run', '--vendor', 'echo no vendor here; exit 7', '--flows', '3');
    expect(code).toBe(1);
    expect(stdout).toMatch(/vendor vendor exited \(7\) before it was ready: no vendor here/);
  });
});

/** Live (not zombie) processes whose command line is exactly `argv`. */
function running(argv: readonly string[]): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'latin1') !== `${argv.join('\0')}\0`) continue;
      if (/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${entry}/stat`, 'latin1'))) continue;
      pids.push(Number(entry));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error; // ENOENT: it ended meanwhile
    }
  }
  return pids;
}

describe('coproxy-testbed run --vendor, a failed start', () => {
  it('leaves nothing running that the failed vendor started, even out of its process group', async () => {
    const { code, stdout } = await testbed('run', '--vendor', 'setsid sleep 301 & echo never ready; exit 7', '--flows', '3');
    expect(code).toBe(1);
    expect(stdout).toMatch(/vendor vendor exited \(7\) before it was ready: never ready/);
    expect(running(['sleep', '301'])).toEqual([]);
  });
});

describe('coproxy-testbed conformance', () => {
  it('fails a vendor that drops records, naming the check and the flow', async () => {
    const json = path.join(dir, 'dropping.json');
    const { code, stdout } = await testbed('conformance', '--vendor', `${process.execPath} ${brokenVendor} --break drop-records ${PARAMETERS}`, '--checks', 'middle-of-chain,last-in-chain,records-dropping-neighbour', '--json', json);
    expect(code).toBe(1);
    // After another vendor, its onward leg carries its own record only, so the flow goes
    // back to the vendors before it: a loop. (First in line, dropping changes nothing
    // visible: there were no records before it, as on Windows.)
    expect(stdout).toMatch(/^FAIL middle-of-chain: a loop: flow (\d+) went client → tls-vendor\[NotRedirected\] → .*candidate\[RedirectedByOther\].*, flow \1$/m);
    expect(stdout).toMatch(/^FAIL last-in-chain: a loop: flow (\d+) went client → tls-vendor\[NotRedirected\] → .*candidate\[RedirectedByOther\].*, flow \1$/m);
    // Beside a neighbour that drops records, it drops them too: the flow never stops coming back.
    expect(stdout).toMatch(/^FAIL records-dropping-neighbour: the loop did not end by itself .*cut after 4 passes: flow (\d+) went client → candidate\[NotRedirected\] → .*, flow \1$/m);
    expect(stdout).toMatch(/^DOES NOT CONFORM: 0 of 3 checks passed/m);
    const report = readJson<ConformanceReport>(json);
    expect(report.version).toBe(2);
    expect(report.passed).toBe(false);
    expect(report.checks.map((c) => [c.name, c.passed, typeof c.flow])).toEqual([['middle-of-chain', false, 'number'], ['last-in-chain', false, 'number'], ['records-dropping-neighbour', false, 'number']]);
    for (const check of report.checks) expect(check.report?.loopDetected).toBe(true);
  });

  it('fails a vendor that alters bytes, naming the check and the flow, with the flow’s hop diagram in the HTML report', async () => {
    const page = path.join(dir, 'altering.html');
    const { code, stdout } = await testbed('conformance', '--vendor', `${process.execPath} ${brokenVendor} --break alter-bytes ${PARAMETERS}`, '--checks', 'alone', '--html', page);
    expect(code).toBe(1);
    const line = /^FAIL alone: .*the origin received other bytes than the client sent.*, flow (\d+)$/m.exec(stdout);
    expect(line, stdout).not.toBeNull();
    const html = fs.readFileSync(page, 'utf8');
    expect(html).toContain('coproxy conformance 2: FAIL');
    // The failing flow's diagram: client → candidate → origin, its bytes differing.
    expect(html).toMatch(new RegExp(`<span class="label">#${line![1]} [a-z]+</span><span class="node client">client</span><span class="arrow">→</span><span class="node">candidate<small>NotRedirected</small></span><span class="arrow">→</span><span class="node origin">origin<small>bytes differ</small>`));
  });

  it('fails a vendor that leaves a process running once stopped, naming it, and kills it', async () => {
    // coproxy-http itself, but its command first starts a process in a session of its own,
    // out of the vendor's process group, as a careless helper or daemonised child would be.
    const leaking = `setsid sleep 300 & exec ${process.execPath} ${httpCli} ${PARAMETERS} --unrecognised relay`;
    const { code, stdout } = await testbed('conformance', '--vendor', leaking, '--checks', 'alone');
    expect(code).toBe(1);
    const line = /^FAIL alone: the candidate left 1 process running after it was stopped: pid (\d+) \(sleep 300\)$/m.exec(stdout);
    expect(line, stdout).not.toBeNull();
    // Killed: gone, or a zombie until whoever inherited it reaps it (a container's pid 1 may not).
    const stat = `/proc/${line![1]}/stat`;
    expect(fs.existsSync(stat) ? /^\d+ \(.*\) (\S)/.exec(fs.readFileSync(stat, 'latin1'))?.[1] : 'gone').toMatch(/^(gone|Z)$/);
  });

  it('exits 2 on a usage error', async () => {
    expect((await testbed('conformance', '--vendor', 'http', '--checks', 'nope')).code).toBe(2);
    expect((await testbed('conformance')).code).toBe(2); // no candidate: a usage error, not a reference vendor's pass
    expect((await testbed('conformance', '--vendor', '')).code).toBe(2);
    expect((await testbed('conformance', '--vendor', 'http', '--backend', 'wfp')).code).toBe(2);
  });
});
