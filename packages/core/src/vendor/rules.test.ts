import { describe, expect, it } from 'vitest';
import type { RequestInfo } from './http-inspection.js';
import { pathReadings } from './path-readings.js';
import { RuleFileError, loadRules, parseRules, rulesInspector } from './rules.js';

// The rule file's full behaviour is tested through coproxy-http (src/inspection.test.ts and
// others), which re-exports these; here, what the kit adds: its own error, and the reading
// a vendor other than coproxy-http gets.

const request = (target: string, host: string): RequestInfo => ({
  method: 'GET',
  url: target,
  target,
  path: pathReadings(target)![0]!,
  paths: pathReadings(target)!,
  host,
  port: undefined,
  authority: host,
  httpVersion: '2.0',
  headers: {},
  connection: { id: 'c1', source: { address: '127.0.0.1', port: 1 }, destination: { address: '127.0.0.1', port: 443, family: 4 }, redirectedBy: [] },
  upgrade: false,
});

describe('the kit’s rule file', () => {
  it('throws RuleFileError (COPROXY_RULES_INVALID) naming each problem’s path, unless the vendor gives its own error', () => {
    const bad = { rules: [{ name: 'x', when: { path: 'admin' }, verdict: 'block' }] };
    expect(() => parseRules(bad, 'rules.json')).toThrow(expect.objectContaining({ name: 'RuleFileError', code: 'COPROXY_RULES_INVALID', problems: [expect.stringMatching(/^rules\[0\]\.when\.path: /)] }));
    expect(() => parseRules(bad, 'rules.json', (source) => new TypeError(`mine: ${source}`))).toThrow('mine: rules.json');
    expect(() => loadRules('/nonexistent/rules.json')).toThrow(RuleFileError);
  });

  it('judges a request as any vendor builds it: host and path rules on the canonical readings', async () => {
    const inspector = rulesInspector(parseRules({ rules: [{ name: 'no-admin', when: { host: 'SHOP.example.', path: '/admin/*' }, verdict: 'block', status: 451 }] }));
    expect(await inspector.inspectRequest?.(request('/x/../%61dmin/users', 'shop.example'))).toEqual({ action: 'block', rule: 'no-admin', status: 451 });
    expect(await inspector.inspectRequest?.(request('/shop', 'shop.example'))).toBeUndefined();
    expect(await inspector.inspectRequest?.(request('/admin/users', 'other.example'))).toBeUndefined();
  });
});
