import fs from 'node:fs';
import path from 'node:path';
import { VendorError } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { CaError, CertificateAuthority } from './ca.js';
import { ClientHelloError, parseClientHello } from './client-hello.js';
import { TlsErrorCode, TlsProxyError } from './errors.js';
import { PolicyError, parsePolicy } from './policy.js';
import { tempDir } from './test-support/harness.js';

/** What `fn` threw (the test fails if it threw nothing). */
async function thrown(fn: () => unknown): Promise<unknown> {
  try {
    await fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

describe('proxy-tls errors', () => {
  it('gives every code of its own the COPROXY_TLS_ prefix, each code once', () => {
    const codes = Object.values(TlsErrorCode);
    expect(codes.length).toBeGreaterThan(0);
    for (const code of codes) expect(code).toMatch(/^COPROXY_TLS_[A-Z0-9_]+$/);
    expect(new Set(codes).size).toBe(codes.length);
  });

  it('throws its parser, CA and policy failures as one base with a prefixed code a caller can branch on', async () => {
    using dir = tempDir();
    // A file where the CA directory should be: the CA cannot be created there.
    const notADir = path.join(dir.path, 'file');
    fs.writeFileSync(notADir, '');
    const failures = [
      await thrown(() => parseClientHello(Buffer.from('GET / HTTP/1.1\r\n'))),
      await thrown(() => CertificateAuthority.open({ dir: path.join(notADir, 'ca') })),
      await thrown(() => parsePolicy({ default: 'allow' })),
    ];

    expect(failures.map((error) => [(error as Error).name, (error as TlsProxyError).code])).toEqual([
      ['ClientHelloError', 'COPROXY_TLS_NOT_TLS'],
      ['CaError', 'COPROXY_TLS_CA_ERROR'],
      ['PolicyError', 'COPROXY_TLS_POLICY_INVALID'],
    ]);
    expect(failures[0]).toBeInstanceOf(ClientHelloError);
    expect(failures[1]).toBeInstanceOf(CaError);
    expect(failures[2]).toBeInstanceOf(PolicyError);
    for (const error of failures) {
      expect(error).toBeInstanceOf(TlsProxyError);
      expect(error).toBeInstanceOf(VendorError);
    }
  });
});
