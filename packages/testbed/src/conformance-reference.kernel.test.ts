import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { assertKernelTestsCanRun, skipKernelTests } from '@coproxy/core/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHECKS } from './conformance.js';
import { conformanceOf } from './test-support/conformance-run.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// The same on nftables: each check in a network namespace the testbed makes, unmodified
// clients (curl among them) redirected by the kernel.
describe.skipIf(skipKernelTests)('the reference vendors under coproxy-testbed conformance (nftables)', () => {
  it.each(['tls', 'http'] as const)('coproxy-%s passes every check', { timeout: 180_000 }, async (kind) => {
    await assertKernelTestsCanRun();
    const { code, stdout, report } = await conformanceOf(kind, 'nftables', dir);
    expect({ code, failed: report.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.reason}`) }, stdout).toEqual({ code: 0, failed: [] });
    expect(report.backend).toBe('nftables');
    expect(report.checks.map((c) => c.name)).toEqual(CHECKS.map((c) => c.name));
    expect(stdout).toMatch(new RegExp(`^CONFORMS: ${CHECKS.length} of ${CHECKS.length} checks passed`, 'm'));
  });
});
