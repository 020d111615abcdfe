import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  RequestViewCode,
  canonicalAuthority,
  canonicalPathPattern,
  canonicalRequest,
  canonicalRuleHost,
  pathReadings,
  slowPathReadings,
} from './canonical-request.js';
import { headersObject } from './http-head.js';

const head = (url: string, rawHeaders: string[], method = 'GET', version: [number, number] = [1, 1]) => {
  const h = { method, url, versionMajor: version[0], versionMinor: version[1], rawHeaders };
  return canonicalRequest(h, headersObject(rawHeaders));
};

describe('path readings', () => {
  const cases: readonly [path: string, readings: string[] | undefined][] = [
    ['/plain/path', ['/plain/path']],
    ['/', ['/']],
    ['/%61dmin/x', ['/admin/x']],
    ['/a/./b/../c', ['/a/c']],
    ['/a/..', ['/']],
    ['/a/.', ['/a/']],
    ['/../../a', ['/a']],
    // A scheme-relative reading too: WHATWG's URL takes the first segment for a host.
    ['//a///b//', ['/a/b/', '/b/']],
    ['//evil/admin/x', ['/evil/admin/x', '/admin/x']],
    // RFC 3986 and WHATWG resolve `..` against the empty segment; nginx merges the slashes first.
    ['/a/b//..', ['/a/b/', '/a/']],
    ['/\\evil/admin', ['/%5Cevil/admin', '/evil/admin', '/admin']],
    ['//evil', ['/evil', '/']],
    ['/a/%2e%2E/b', ['/b']],
    ['/a/.%2e/b', ['/b']],
    ['/a%2fb', ['/a%2Fb', '/a/b']],
    ['/x/..%2F..%2Fadmin', ['/x/..%2F..%2Fadmin', '/admin']],
    ['/a\\..\\b', ['/a%5C..%5Cb', '/b']],
    ['/a%5c..%5cb', ['/a%5C..%5Cb', '/b']],
    ['/admin;x/y', ['/admin;x/y', '/admin/y']],
    ['/x/..;/admin', ['/x/..;/admin', '/admin']],
    ['/%25', ['/%25']],
    // Decoded once, the bytes are `%2e%2e`, which the canonical encoding writes as before.
    ['/%252e%252e', ['/%252e%252e']],
    ['/caf\u00c3\u00a9', ['/caf%C3%A9']],
    ['/caf%c3%a9', ['/caf%C3%A9']],
    ['/a b', ['/a%20b']],
    ['/.well-known/x', ['/.well-known/x']],
    ['/%zz', undefined],
    ['/%0', undefined],
    ['/a%00b', undefined],
  ];

  it.each(cases)('reads %j as %j', (path, readings) => {
    expect(pathReadings(path)).toEqual(readings);
  });

  // Paths from the characters that matter: separators, dots, escapes of each, ';', letters.
  const piece = fc.constantFrom('/', '//', '.', '..', '%2e', '%2E', '%2f', '%2F', '%5c', '\\', ';', ';p=1', 'a', 'B', '%41', '%7e', '~', '%25', '%C3%A9', '\u00e9', ' ', '%20', '*', '@', ':');
  const path = fc.array(piece, { maxLength: 12 }).map((pieces) => `/${pieces.join('')}`);

  it('takes the fast path only where the full reading would give the path itself', () => {
    fc.assert(
      fc.property(path, (p) => {
        expect(pathReadings(p)).toEqual(slowPathReadings(p));
      }),
      { numRuns: 2000, seed: 14 },
    );
  });

  it('is idempotent: each reading, read again, reads the same first', () => {
    fc.assert(
      fc.property(path, (p) => {
        for (const reading of pathReadings(p) ?? []) expect(pathReadings(reading)?.[0]).toBe(reading);
      }),
      { numRuns: 2000, seed: 15 },
    );
  });

  it('gives readings with no dot-segment and no repeated slash, starting with /', () => {
    fc.assert(
      fc.property(path, (p) => {
        for (const reading of pathReadings(p) ?? []) {
          expect(reading.startsWith('/')).toBe(true);
          expect(reading).not.toMatch(/\/\/|\/\.\.?(?:\/|$)/);
        }
      }),
      { numRuns: 2000, seed: 16 },
    );
  });

  // A path and rewrites of it that RFC 3986 calls equivalent: the standard reading is one class.
  const segment = fc.stringMatching(/^[A-Za-z0-9_~!$&'()*+,=:@-]{1,6}$/).filter((s) => s !== '.' && s !== '..');
  const rewrite = (segments: string[], edits: { kind: number; at: number }[]): string => {
    const out: string[] = [];
    segments.forEach((s, i) => {
      let text = s;
      // Escapes first, on the segment's own characters; then the detours around it.
      const mine = edits.filter((e) => e.at % segments.length === i).sort((a, b) => Number(a.kind > 1) - Number(b.kind > 1));
      let escaped = 0;
      for (const edit of mine) {
        switch (edit.kind) {
          case 0: // an unreserved character escaped, in either case
          case 1: {
            const at = escaped;
            const c = text.charAt(at);
            if (!/[A-Za-z0-9~_-]/.test(c)) break;
            const hex = c.charCodeAt(0).toString(16);
            text = `${text.slice(0, at)}%${edit.kind === 0 ? hex : hex.toUpperCase()}${text.slice(at + 1)}`;
            escaped += 3;
            break;
          }
          case 2: // a detour: into a segment and back out
            text = `zz/../${text}`;
            break;
          case 3: // a "here" segment
            text = `./${text}`;
            break;
          case 4: // a repeated slash
            text = `/${text}`;
            break;
          default: // an encoded dot detour
            text = `q/%2e%2E/${text}`;
        }
      }
      out.push(text);
    });
    return `/${out.join('/')}`;
  };

  it('puts every RFC 3986 equivalent of a path in one class', () => {
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 5 }), fc.array(fc.record({ kind: fc.nat({ max: 5 }), at: fc.nat({ max: 20 }) }), { maxLength: 6 }), (segments, edits) => {
        const plain = `/${segments.join('/')}`;
        expect(pathReadings(rewrite(segments, edits))?.[0]).toBe(pathReadings(plain)?.[0]);
      }),
      { numRuns: 1000, seed: 17 },
    );
  });
});

describe('authorities', () => {
  it.each([
    ['Blocked.Test.', { host: 'blocked.test', port: undefined, authority: 'blocked.test' }],
    ['a.test:080', { host: 'a.test', port: 80, authority: 'a.test:80' }],
    ['127.0.0.1:8080', { host: '127.0.0.1', port: 8080, authority: '127.0.0.1:8080' }],
    ['[0:0:0:0:0:0:0:1]', { host: '::1', port: undefined, authority: '[::1]' }],
    ['[FE80::A]:443', { host: 'fe80::a', port: 443, authority: '[fe80::a]:443' }],
    ['under_score.test', { host: 'under_score.test', port: undefined, authority: 'under_score.test' }],
    ['', { host: '', port: undefined, authority: '' }],
  ])('reads %j in canonical form', (value, expected) => {
    expect(canonicalAuthority(value)).toEqual(expected);
  });

  it.each(['a.test:', 'a.test:65536', 'a.test:-1', 'a..test', '.a.test', 'a.test..', 'user@a.test', 'a.test/x', '%61.test', 'a test', '[::1', '[::g]', '[fe80::1%25eth0]', '[::1]x', 'a.test:80:80', '::1'])(
    'refuses %j',
    (value) => {
      expect(canonicalAuthority(value)).toBeUndefined();
    },
  );

  it('is idempotent, and case and a trailing dot do not change the class', () => {
    const label = fc.stringMatching(/^[a-z0-9_-]{1,8}$/);
    // A name whose last label is a number is an IPv4 address (`0` is 0.0.0.0), read as one: core's authority tests.
    const labels = fc.array(label, { minLength: 1, maxLength: 4 }).filter((parts) => !/^(?:[0-9]+|0x[0-9a-f]*)$/.test(parts.at(-1)!));
    fc.assert(
      fc.property(labels, fc.option(fc.nat({ max: 65535 })), fc.boolean(), fc.boolean(), (labels, port, upper, dot) => {
        const name = labels.join('.');
        const variant = `${upper ? name.toUpperCase() : name}${dot ? '.' : ''}${port === null ? '' : `:${port}`}`;
        const canonical = canonicalAuthority(variant);
        expect(canonical?.host).toBe(name);
        expect(canonicalAuthority(canonical!.authority)).toEqual(canonical);
      }),
      { numRuns: 1000, seed: 18 },
    );
  });

  it('reads rule hosts the same way', () => {
    expect(['Blocked.Test.', '*.Example.COM.', '[::1]', '::1', '0:0::1'].map(canonicalRuleHost)).toEqual(['blocked.test', '*.example.com', '::1', '::1', '::1']);
    expect(['a.test:80', '*.', 'a b', '*.[::1]'].map(canonicalRuleHost)).toEqual([undefined, undefined, undefined, undefined]);
  });

  it('reads rule paths in the canonical encoding, wildcards kept', () => {
    expect(['/%61dmin/*', '/a%2fb/*', '/caf\u00e9/*', '/a b'].map(canonicalPathPattern)).toEqual(['/admin/*', '/a%2Fb/*', '/caf%C3%A9/*', '/a%20b']);
    expect(canonicalPathPattern('/%zz')).toBeUndefined();
  });
});

describe('canonical request', () => {
  it('reuses the client headers untouched when Host is already canonical', () => {
    const raw = ['Host', 'a.test', 'Accept', '*/*'];
    const view = head('/x?y=1', raw);
    expect(view).toMatchObject({ form: 'origin', target: '/x?y=1', host: 'a.test', authority: 'a.test', path: '/x', paths: ['/x'], query: 'y=1', rejection: undefined });
    expect(view.rawHeaders).toBe(raw);
  });

  it('replaces Host by an absolute-form target\'s authority, in place, and forwards origin-form', () => {
    const view = head('HTTP://Shop.Test.:8080?q', ['Accept', '*/*', 'hOsT', 'other.test', 'X-A', '1']);
    expect(view).toMatchObject({ form: 'absolute', target: '/?q', host: 'shop.test', port: 8080, authority: 'shop.test:8080', rejection: undefined });
    expect(view.rawHeaders).toEqual(['Accept', '*/*', 'hOsT', 'shop.test:8080', 'X-A', '1']);
    expect(view.headers.host).toBe('shop.test:8080');
  });

  it('adds Host to an HTTP/1.0 request: the absolute-form authority, or empty', () => {
    expect(head('http://a.test/x', [], 'GET', [1, 0]).rawHeaders).toEqual(['Host', 'a.test']);
    expect(head('/x', [], 'GET', [1, 0])).toMatchObject({ host: undefined, authority: '', rawHeaders: ['Host', ''] });
  });

  it.each([
    ['/x', ['Host', 'a', 'host', 'b'], 'GET', RequestViewCode.HostDuplicate],
    ['/x', [], 'GET', RequestViewCode.HostMissing],
    ['http://a.test/x', [], 'GET', RequestViewCode.HostMissing],
    ['/x', ['Host', 'a.test:x'], 'GET', RequestViewCode.HostInvalid],
    ['https://a.test/x', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['ws://a.test/x', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['http://u:p@a.test/x', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['http://a.test:99999/', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['a.test:80', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['*', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['/a#b', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
    ['/a%00', ['Host', 'a.test'], 'GET', RequestViewCode.TargetInvalid],
  ])('refuses %j with headers %j (%s): %s', (url, raw, method, code) => {
    const view = head(url, raw, method);
    expect(view.rejection).toMatchObject({ name: 'RequestViewError', code, status: 400 });
  });

  it('takes asterisk-form with OPTIONS and authority-form with CONNECT', () => {
    expect(head('*', ['Host', 'a.test'], 'OPTIONS')).toMatchObject({ form: 'asterisk', target: '*', path: '*', rejection: undefined });
    expect(head('a.test:443', ['Host', 'a.test:443'], 'CONNECT')).toMatchObject({ form: 'authority', rejection: undefined });
  });
});
