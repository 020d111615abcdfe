import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { RequestInfo } from './http-inspection.js';
import { globMatches, rulesInspector } from './rules.js';

/**
 * Review: a rule's path pattern was a regular expression, `*` as `.*`; V8 backtracks, and
 * a pattern of a few stars against a path the client chose took time polynomial in its
 * length (four stars and a literal against `/a/a/…`, 1 KB: 19 s of CPU), the vendor serving no one
 * meanwhile. The pieces between the stars are now found one after another.
 */

const request = (path: string): RequestInfo => ({
  method: 'GET',
  url: path,
  target: path,
  path,
  paths: [path],
  host: 'shop.example',
  port: undefined,
  authority: 'shop.example',
  httpVersion: '1.1',
  headers: {},
  connection: { id: 'c', source: { address: '127.0.0.1', port: 1 }, destination: { address: '127.0.0.1', port: 80, family: 4 }, redirectedBy: [] },
  upgrade: false,
});

describe('path patterns (review)', () => {
  it('match as `*` for any run of characters, the whole text, as the regular expression did', () => {
    const text = fc.stringMatching(/^[ab/]{0,12}$/);
    const pattern = fc.stringMatching(/^[ab/*]{0,8}$/);
    fc.assert(
      fc.property(pattern, text, (p, t) => {
        const regex = new RegExp(`^${p.split('*').map((piece) => piece.replace(/[/]/g, '\\/')).join('.*')}$`, 's');
        expect(globMatches(p.split('*'), t)).toBe(regex.test(t));
      }),
      { numRuns: 3000, seed: 7 },
    );
  });

  it('judge a 4 KB path of many segments against a five-star pattern (a backtracking expression would run for hours)', () => {
    const rules = rulesInspector({ rules: [{ name: 'deep-delete', when: { path: '/*/*/*/*/*/delete' }, verdict: 'block' }] });
    expect(rules.inspectRequest?.(request(`/${'a/'.repeat(2000)}`))).toBeUndefined();
    expect(rules.inspectRequest?.(request(`/${'a/'.repeat(2000)}delete`))).toMatchObject({ action: 'block', rule: 'deep-delete' });
  });

  it('fold case for the block-only readings as before: /ADMIN/x is blocked by /admin/*', () => {
    const rules = rulesInspector({ rules: [{ name: 'no-admin', when: { path: '/admin/*' }, verdict: 'block' }] });
    expect(rules.inspectRequest?.(request('/ADMIN/x'))).toMatchObject({ action: 'block' });
    expect(rules.inspectRequest?.(request('/public/x'))).toBeUndefined();
  });
});
