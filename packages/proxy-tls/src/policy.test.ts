import { describe, expect, it } from 'vitest';
import { type HandshakeFacts, PolicyError, compilePolicy, parsePolicy } from './policy.js';

const facts = (overrides: Partial<HandshakeFacts> = {}): HandshakeFacts => ({
  sni: 'www.example.com',
  alpn: ['h2', 'http/1.1'],
  ja3: 'e7d705a3286e19ea42f587b344ee6865',
  ja4: 't13d1516h2_8daaf6152771_e5627efa2ab1',
  ech: false,
  ...overrides,
});

describe('policy', () => {
  it('splices everything without rules, and applies the default otherwise', () => {
    expect(compilePolicy({})(facts())).toEqual({ action: 'splice', rule: undefined });
    expect(compilePolicy({ default: 'block' })(facts())).toEqual({ action: 'block', rule: undefined });
  });

  it('lets the first rule whose conditions all hold decide', () => {
    const decide = compilePolicy(
      parsePolicy({
        default: 'bump',
        rules: [
          { name: 'bank', when: { sni: '*.Bank.example' }, action: 'splice' },
          { name: 'api-h1', when: { sni: 'api.example.com', alpn: ['http/1.1'] }, action: 'bump' },
          { name: 'no-name', when: { nosni: true }, action: 'block' },
          { name: 'old-curl', when: { ja3: 'e7d705a3286e19ea42f587b344ee6865' }, action: 'block' },
          { name: 'by-ja4', when: { ja4: 't13d1516h2_8daaf6152771_e5627efa2ab1' }, action: 'splice' },
        ],
      }),
    );

    expect(decide(facts({ sni: 'online.bank.example' }))).toEqual({ action: 'splice', rule: 'bank' });
    expect(decide(facts({ sni: 'bank.example', ja3: '0'.repeat(32), ja4: 'x' }))).toEqual({ action: 'bump', rule: undefined }); // '*.' needs a subdomain
    expect(decide(facts({ sni: 'api.example.com', alpn: ['h2'], ja3: '0'.repeat(32), ja4: 'x' }))).toEqual({ action: 'bump', rule: undefined });
    expect(decide(facts({ sni: 'api.example.com', alpn: ['h2', 'http/1.1'] }))).toEqual({ action: 'bump', rule: 'api-h1' });
    expect(decide(facts({ sni: undefined }))).toEqual({ action: 'block', rule: 'no-name' });
    expect(decide(facts())).toEqual({ action: 'block', rule: 'old-curl' });
    expect(decide(facts({ ja3: '0'.repeat(32) }))).toEqual({ action: 'splice', rule: 'by-ja4' });
  });

  it('matches hellos with or without an encrypted_client_hello extension when a rule names ech', () => {
    const decide = compilePolicy(
      parsePolicy({
        default: 'bump',
        rules: [
          { name: 'ech-bank', when: { sni: '*.bank.example', ech: true }, action: 'block' },
          { name: 'leave-ech-alone', when: { ech: true }, action: 'splice' },
          { name: 'plain-bank', when: { sni: '*.bank.example', ech: false }, action: 'splice' },
        ],
      }),
    );

    expect(decide(facts({ ech: true }))).toEqual({ action: 'splice', rule: 'leave-ech-alone' });
    expect(decide(facts({ ech: false }))).toEqual({ action: 'bump', rule: undefined });
    expect(decide(facts({ sni: 'www.bank.example', ech: true }))).toEqual({ action: 'block', rule: 'ech-bank' });
    expect(decide(facts({ sni: 'www.bank.example', ech: false }))).toEqual({ action: 'splice', rule: 'plain-bank' });
    expect(() => parsePolicy({ rules: [{ name: 'x', when: { ech: 'yes' }, action: 'splice' }] }, 'p.json')).toThrow(/p\.json\.rules\[0\]\.when\.ech/);
  });

  it('names every problem by its path in the file', () => {
    const error = ((): unknown => {
      try {
        parsePolicy({ default: 'allow', rules: [{ name: 'x', when: { sni: 'a b', ja3: 'XYZ', port: 1 }, action: 'block' }] }, 'p.json');
      } catch (e) {
        return e;
      }
      return undefined;
    })();

    expect(error).toBeInstanceOf(PolicyError);
    const problems = (error as PolicyError).problems.join('\n');
    expect((error as PolicyError).code).toBe('COPROXY_TLS_POLICY_INVALID');
    expect(problems).toContain('p.json.default');
    expect(problems).toContain("p.json.rules[0].when.sni: must be a host name, or '*.' and a domain");
    expect(problems).toContain('p.json.rules[0].when.ja3: must be 32 lower-case hex digits (an MD5)');
    expect(problems).toContain('p.json.rules[0].when');
    expect(problems).toMatch(/port/);
  });
});
