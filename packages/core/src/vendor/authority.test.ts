import { describe, expect, it } from 'vitest';
import { canonicalAuthority, canonicalRuleHost } from './authority.js';

describe('canonicalAuthority: one reading of a host for every vendor', () => {
  it.each([
    ['Shop.EXAMPLE', { host: 'shop.example', port: undefined, authority: 'shop.example' }],
    ['shop.example.', { host: 'shop.example', port: undefined, authority: 'shop.example' }],
    ['shop.example.:8443', { host: 'shop.example', port: 8443, authority: 'shop.example:8443' }],
    ['[0:0:0:0:0:0:0:1]', { host: '::1', port: undefined, authority: '[::1]' }],
    ['[2001:DB8::0:1]:443', { host: '2001:db8::1', port: 443, authority: '[2001:db8::1]:443' }],
    ['127.0.0.1:80', { host: '127.0.0.1', port: 80, authority: '127.0.0.1:80' }],
  ])('reads %j', (value, expected) => {
    expect(canonicalAuthority(value)).toEqual(expected);
  });

  it.each([
    'user@shop.example', // user information: origins read it as part of the host or drop it
    'user:pw@shop.example',
    'shop.example:', // an empty port
    'shop.example:99999',
    'shop.example:+1',
    'sh%6fp.example', // an escape
    '[::1', // an unclosed bracket
    '[fe80::1%25eth0]', // a zone id
    '::1', // IPv6 without brackets is no authority
    'shop.example/admin',
    'shop example',
  ])('refuses %j', (value) => {
    expect(canonicalAuthority(value)).toBeUndefined();
  });

  it('reads a rule host the same way, with or without brackets, keeping *.', () => {
    expect(canonicalRuleHost('*.Shop.Example.')).toBe('*.shop.example');
    expect(canonicalRuleHost('0:0::1')).toBe('::1');
    expect(canonicalRuleHost('[::1]')).toBe('::1');
    expect(canonicalRuleHost('shop.example:443')).toBeUndefined();
  });
});
