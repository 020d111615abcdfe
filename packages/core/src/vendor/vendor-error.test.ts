import { describe, expect, it } from 'vitest';
import { VendorError, defineErrorCodes, errorCodeOf } from './vendor-error.js';

describe('the vendor error base', () => {
  it('prefixes every code and keeps it as the error code', () => {
    const Codes = defineErrorCodes('ACME_DLP', { OriginTimeout: 'ORIGIN_TIMEOUT', NotTls: 'NOT_TLS' });
    expect(Codes).toEqual({ OriginTimeout: 'ACME_DLP_ORIGIN_TIMEOUT', NotTls: 'ACME_DLP_NOT_TLS' });
    const error = new VendorError(Codes.NotTls, 'not TLS', { cause: new Error('first byte 0x00') });
    expect(error).toBeInstanceOf(Error);
    expect(error.code).toBe('ACME_DLP_NOT_TLS');
    expect((error.cause as Error).message).toBe('first byte 0x00');
    expect(Object.isFrozen(Codes)).toBe(true);
  });

  it('refuses a prefix or code that is not upper snake case', () => {
    expect(() => defineErrorCodes('acme', { A: 'X' })).toThrow(/prefix 'acme'/);
    expect(() => defineErrorCodes('ACME', { A: 'x-y' })).toThrow(/code 'x-y'/);
    expect(() => defineErrorCodes('ACME_', { A: 'X' })).toThrow(/prefix/);
  });

  it('reads the code of a caught error, or falls back', () => {
    expect(errorCodeOf(Object.assign(new Error('reset'), { code: 'ECONNRESET' }), 'X')).toBe('ECONNRESET');
    expect(errorCodeOf(new Error('plain'), 'COPROXY_TLS_ORIGIN_FAILED')).toBe('COPROXY_TLS_ORIGIN_FAILED');
    expect(errorCodeOf(null, 'F')).toBe('F');
    expect(errorCodeOf({ code: 42 }, 'F')).toBe('F');
  });
});
