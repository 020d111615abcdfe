import { describe, expect, it } from 'vitest';
import { canonicalAuthority } from './authority.js';
import type { RequestInfo } from './http-inspection.js';
import { rulesInspector } from './rules.js';

/**
 * Review: a Host whose last label is a number is an IPv4 address to WHATWG's URL parser
 * (Node applications' `new URL(path, \`http://${host}\`)`), curl and inet_aton: `127.1`,
 * `0x7f.1` and `2130706433` are all 127.0.0.1. Read as reg-names they escaped a host rule
 * on 127.0.0.1 while the origin acted on 127.0.0.1.
 */

const request = (host: string): RequestInfo => {
  const parsed = canonicalAuthority(host);
  return {
    method: 'GET',
    url: '/',
    target: '/',
    path: '/',
    paths: ['/'],
    host: parsed?.host,
    port: parsed?.port,
    authority: parsed?.authority ?? host,
    httpVersion: '1.1',
    headers: { host },
    connection: { id: 'c', source: { address: '127.0.0.1', port: 1 }, destination: { address: '127.0.0.1', port: 80, family: 4 }, redirectedBy: [] },
    upgrade: false,
  };
};

describe('hosts that end in a number (review)', () => {
  it.each(['127.1', '0x7f.1', '2130706433', '127.0.0.01', '0177.0.0.1', '127.0.0.1.'])('reads %j as the IPv4 address an origin reads, 127.0.0.1', (host) => {
    expect(canonicalAuthority(host)?.host).toBe('127.0.0.1');
    expect(canonicalAuthority(`${host}:8080`)?.authority).toBe('127.0.0.1:8080');
  });

  it.each(['1.2.3.4.5', '999.1.1.1', 'a.1', '09'])('refuses %j, which a URL parser refuses as an IPv4 address', (host) => {
    expect(canonicalAuthority(host)).toBeUndefined();
  });

  it('keeps names whose last label is no number', () => {
    expect(canonicalAuthority('1a.B')?.host).toBe('1a.b');
    expect(canonicalAuthority('shop.example')?.host).toBe('shop.example');
  });

  it('blocks 2130706433 by a rule on host 127.0.0.1', () => {
    const rules = rulesInspector({ rules: [{ name: 'no-local', when: { host: '127.0.0.1' }, verdict: 'block' }] });
    expect(rules.inspectRequest?.(request('2130706433'))).toMatchObject({ action: 'block', rule: 'no-local' });
  });
});
