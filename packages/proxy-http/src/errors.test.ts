import { VendorError } from '@coproxy/core';
import { describe, expect, it } from 'vitest';
import { RequestViewCode, RequestViewError } from './canonical-request.js';
import { AnnotationRefusedError, HttpProxyError, HttpProxyOptionsError, ProxyErrorCode, RulesError } from './errors.js';
import { createHttpProxy } from './index.js';

describe('error codes', () => {
  it('are all under the vendor prefix, each once', () => {
    const codes = [...Object.values(ProxyErrorCode), ...Object.values(RequestViewCode)];
    for (const code of codes) expect(code).toMatch(/^COPROXY_HTTP_[A-Z0-9]+(?:_[A-Z0-9]+)*$/);
    expect(new Set(Object.values(ProxyErrorCode)).size).toBe(Object.values(ProxyErrorCode).length);
  });

  it('come with every error the package throws, on one base that is core’s VendorError', () => {
    let thrown: unknown;
    try {
      createHttpProxy({ id: 'errors', priority: 1, originTimeoutMs: 0 });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(HttpProxyOptionsError);
    expect(thrown).toBeInstanceOf(HttpProxyError);
    expect(thrown).toBeInstanceOf(VendorError);
    expect(thrown).toMatchObject({ name: 'HttpProxyOptionsError', code: 'COPROXY_HTTP_INVALID_OPTIONS', option: 'originTimeoutMs' });
    for (const error of [new RulesError('rules.json', ['x: bad']), new AnnotationRefusedError('host'), new RequestViewError(RequestViewCode.HostMissing, 'no Host')]) {
      expect(error).toBeInstanceOf(HttpProxyError);
      expect(error.code).toMatch(/^COPROXY_HTTP_/);
    }
  });
});
