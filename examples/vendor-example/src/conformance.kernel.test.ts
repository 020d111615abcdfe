import { assertKernelTestsCanRun, skipKernelTests } from '@coproxy/core/testing';
import { describe, expect, it } from 'vitest';
import { conformance } from './test-support/conformance.js';

// The same on the nftables backend: the testbed makes a network namespace of its own per
// check, the vendors install nft tables there, and the clients are unmodified (curl among them).
describe.skipIf(skipKernelTests)('the word filter under coproxy-testbed conformance (nftables)', () => {
  it('passes every check on the nftables backend', { timeout: 180_000 }, async () => {
    await assertKernelTestsCanRun();
    const { code, stdout, report } = await conformance('nftables');
    expect({ code, failed: report.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.reason}`) }, stdout).toEqual({ code: 0, failed: [] });
    expect(report.checks).toHaveLength(11);
    expect(stdout).toMatch(/^CONFORMS: 11 of 11 checks passed/m);
  });
});
