import { describe, expect, it } from 'vitest';
import { conformance } from './test-support/conformance.js';

// The README's last step, run as a vendor's CI would: the word filter through every check of
// the testbed's conformance kit, beside coproxy-tls and coproxy-http, on the embedded backend.
describe('the word filter under coproxy-testbed conformance', () => {
  it('passes every check on the embedded backend', { timeout: 180_000 }, async () => {
    const { code, stdout, report } = await conformance('embedded');
    expect({ code, failed: report.checks.filter((c) => !c.passed).map((c) => `${c.name}: ${c.reason}`) }, stdout).toEqual({ code: 0, failed: [] });
    expect(report.passed).toBe(true);
    expect(report.checks.map((c) => c.name)).toEqual([
      'alone', 'first-in-chain', 'middle-of-chain', 'last-in-chain', 'records-dropping-neighbour', 'fail-open-restart',
      'fail-closed-restart', 'half-close', 'large-bodies', 'many-concurrent-flows', 'slow-reader',
    ]);
    expect(stdout.split('\n').filter((line) => line.startsWith('PASS '))).toHaveLength(11);
    expect(stdout).toMatch(/^CONFORMS: 11 of 11 checks passed/m);
  });
});
