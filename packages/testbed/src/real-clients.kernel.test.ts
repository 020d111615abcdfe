import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { assertKernelTestsCanRun, skipKernelTests } from '@coproxy/core/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RealClientsReport } from './real-clients.js';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const brokenVendor = fileURLToPath(new URL('../dist/test-fixtures/broken-vendor.js', import.meta.url));
const PARAMETERS = '--id {id} --priority {priority} --ports {ports} --backend {backend} --fail-mode {failMode}';
/** Headless Chromium is a Debian package; a developer without it may set COPROXY_SKIP_BROWSER_TESTS=1 (never on CI). */
const skipBrowser = process.env.COPROXY_SKIP_BROWSER_TESTS === '1' && process.env.CI !== 'true';
const CLIENTS = skipBrowser ? ['--clients', 'curl,python-urllib'] : [];

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

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

describe.skipIf(skipKernelTests)('coproxy-testbed clients (curl and Python urllib on nftables)', () => {
  it('gives each real client the same bytes through coproxy-tls and coproxy-http as without them, each vendor once', async () => {
    await assertKernelTestsCanRun();
    const json = path.join(dir, 'clients.json');
    const { code, stdout } = await testbed('clients', ...CLIENTS, '--json', json);
    expect({ code, stdout: code === 0 ? '' : stdout }).toEqual({ code: 0, stdout: '' });
    const report = JSON.parse(fs.readFileSync(json, 'utf8')) as RealClientsReport;
    expect(report.flows.map((f) => f.flow.client)).toEqual(['curl', 'curl', 'curl', 'python-urllib', 'python-urllib', 'python-urllib', ...(skipBrowser ? [] : ['chromium', 'chromium'])]);
    for (const flow of report.flows) {
      expect(flow.problems).toEqual([]);
      expect(flow.inspected.received).toBe(flow.direct.received);
      expect(flow.inspected.origin?.body).toBe(flow.direct.origin?.body);
      const connections = flow.hops.filter((h) => h.vendor === 'http-vendor').length;
      expect(connections).toBeGreaterThanOrEqual(1);
      for (const hop of flow.hops) expect([hop.vendor, hop.state, hop.redirectedBy]).toEqual(hop.vendor === 'tls-vendor' ? ['tls-vendor', 'NotRedirected', ['tls-vendor']] : ['http-vendor', 'RedirectedByOther', ['tls-vendor', 'http-vendor']]);
    }
    // The uploads and downloads are real sizes, not empty answers that would compare equal.
    expect(report.flows.slice(0, 6).map((f) => f.inspected.receivedBytes)).toEqual([300 * 1024, 1024 * 1024, 2048 * 1024, 512 * 1024, 700 * 1024, 3 * 1024 * 1024]);
    // Chromium's page: its script's fetch (256 KiB) and WebSocket echo (64 KiB), over HTTP and HTTPS.
    if (!skipBrowser) expect(stdout.split('\n').filter((line) => /^PASS chromium GET https? \/: the same page result as without vendors/.test(line))).toHaveLength(2);
  });

  it('fails each flow a vendor alters, naming the client and the flow', async () => {
    await assertKernelTestsCanRun();
    const { code, stdout } = await testbed('clients', '--clients', 'curl,python-urllib', '--vendors', 'tls', '--vendor', `${process.execPath} ${brokenVendor} --break alter-bytes ${PARAMETERS}`);
    expect(code).toBe(1);
    // curl and urllib only: a browser whose handshake breaks waits for its page to time out.
    // It flips the byte at offset 200 of what the client sends: a GET shorter than that goes
    // through unchanged (and passes); a plain-HTTP upload reaches the origin altered; over
    // HTTPS the TLS record no longer authenticates and the client fails.
    expect(stdout).toMatch(/^PASS curl GET http \/data\/300: the same 307200 bytes as without vendors, through tls-vendor → vendor$/m);
    expect(stdout).toMatch(/^FAIL python-urllib POST http \/echo \(524288 bytes up\): .*the origin received another body than without vendors \(524288 against 524288 bytes\).*, flow 3$/m);
    expect(stdout).toMatch(/^FAIL python-urllib POST https \/echo \(3145728 bytes up\): through the vendors the client failed: .*, flow 5$/m);
    expect(stdout.split('\n').filter((line) => line.startsWith('FAIL '))).toHaveLength(5);
  });
});
