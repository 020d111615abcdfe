import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHECKS } from './conformance.js';
import { conformanceOf } from './test-support/conformance-run.js';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// Issue #20's "done when": both reference vendors pass the kit they are the references of,
// each as the candidate (first, middle and last beside the other two, restarted, …).
describe('the reference vendors under coproxy-testbed conformance (embedded)', () => {
  it.each(['tls', 'http'] as const)('coproxy-%s passes every check', { timeout: 180_000 }, async (kind) => {
    const { code, stdout, report } = await conformanceOf(kind, 'embedded', dir);
    expect({ code, failed: report.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.reason}`) }, stdout).toEqual({ code: 0, failed: [] });
    expect(report.checks.map((c) => c.name)).toEqual(CHECKS.map((c) => c.name));
    expect(stdout.split('\n').filter((line) => line.startsWith('PASS '))).toHaveLength(CHECKS.length);
    expect(stdout).toMatch(new RegExp(`^CONFORMS: ${CHECKS.length} of ${CHECKS.length} checks passed`, 'm'));
    // The restarts say what the flows did while the candidate was down.
    expect(stdout).toMatch(/^PASS fail-open-restart: 6 flows through tls-vendor → candidate → http-vendor before the kill and after the restart, 3 while it was down through tls-vendor → http-vendor, as they had to$/m);
    expect(stdout).toMatch(/^PASS fail-closed-restart: 6 flows through tls-vendor → candidate → http-vendor before the kill and after the restart, 3 while it was down refused, none reaching the origin, as they had to$/m);
  });
});
