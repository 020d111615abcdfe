import { describe, expect, it } from 'vitest';
import { type HttpOrigin, dial, rawRequest, readAll, startHttpOrigin, startProxy, startTcpOrigin, until } from './test-support/harness.js';

/**
 * Issue #14, item 3: what the rules evaluate must be what the origin acts on. Each case
 * here passed the rules (or reached the origin in a form the rules never saw) before the
 * canonical view existed.
 */
const RULES = {
  rules: [
    { name: 'no-blocked-host', when: { host: 'blocked.test' }, verdict: 'block' as const, status: 403, reason: 'host blocked' },
    { name: 'no-admin', when: { path: '/admin/*' }, verdict: 'block' as const, status: 403, reason: 'admin blocked' },
    { name: 'public-first', when: { path: '/public/*' }, verdict: 'allow' as const },
  ],
};

/** An origin that answers with what it parsed: method, target and Host, one per line. */
function startReadingOrigin(): Promise<HttpOrigin> {
  return startHttpOrigin((req, res) => {
    req.resume().once('end', () => res.end(`${req.method} ${req.url} host=${req.headers.host ?? '(none)'}`));
  });
}

const request = (target: string, headers = 'Host: ok.test\r\n', version = '1.1'): string => `GET ${target} HTTP/${version}\r\n${headers}Connection: close\r\n\r\n`;

describe('one view for the rules and the origin', () => {
  const blocked: readonly [what: string, bytes: string, reason: string][] = [
    ['a percent-encoded unreserved letter', request('/%61dmin/x'), 'admin blocked'],
    ['a dot-dot segment', request('/ok/../admin/x'), 'admin blocked'],
    ['a single-dot segment', request('/./admin/x'), 'admin blocked'],
    ['a repeated slash', request('//admin/x'), 'admin blocked'],
    ['encoded dot segments', request('/ok/%2e%2E/admin/x'), 'admin blocked'],
    ['an encoded slash that a decoding origin reads as a separator', request('/admin%2Fx'), 'admin blocked'],
    ['encoded slashes around a dot-dot segment, behind an allow rule', request('/public/..%2F..%2Fadmin/x'), 'admin blocked'],
    ['backslashes an origin may read as slashes', request('/ok\\..\\admin\\x'), 'admin blocked'],
    ['an encoded backslash', request('/ok%5C..%5Cadmin%5Cx'), 'admin blocked'],
    ['path parameters a servlet container strips', request('/admin;jsessionid=1/x'), 'admin blocked'],
    ['upper-case letters an origin that matches paths case-insensitively ignores (Express by default, IIS)', request('/ADMIN/x'), 'admin blocked'],
    ['upper case and a dot-dot segment together', request('/ok/../Admin/x'), 'admin blocked'],
    ['a trailing dot on the host', request('/', 'Host: blocked.test.\r\n'), 'host blocked'],
    ['an upper-case host', request('/', 'Host: BLOCKED.test\r\n'), 'host blocked'],
    ['a host with a port and a trailing dot', request('/', 'Host: Blocked.Test.:8080\r\n'), 'host blocked'],
    ['an absolute-form target naming a blocked host, with another Host', request('http://blocked.test/x', 'Host: ok.test\r\n'), 'host blocked'],
    ['an absolute-form target with an upper-case scheme and a trailing dot', request('HTTP://BLOCKED.TEST./x', 'Host: ok.test\r\n'), 'host blocked'],
    ['an absolute-form target whose path is blocked', request('http://ok.test/ok/../admin/x', 'Host: ok.test\r\n'), 'admin blocked'],
  ];

  it.each(blocked)('blocks %s, and the origin never sees it', async (_what, bytes, reason) => {
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const reply = await rawRequest(under.registry, origin.port, bytes);

    expect(reply).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n/);
    expect(reply.endsWith(`\r\n\r\n${reason}\n`)).toBe(true);
    expect(origin.connections).toHaveLength(0);
  });

  const refused: readonly [what: string, bytes: string, code: string][] = [
    ['two Host headers', request('/', 'Host: ok.test\r\nHost: blocked.test\r\n'), 'COPROXY_HTTP_HOST_DUPLICATE'],
    ['two Host headers differing in case only', request('/', 'Host: ok.test\r\nhost: ok.test\r\n'), 'COPROXY_HTTP_HOST_DUPLICATE'],
    ['an HTTP/1.1 request without Host', request('/', ''), 'COPROXY_HTTP_HOST_MISSING'],
    ['a Host with a path in it', request('/', 'Host: ok.test/admin\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['a Host with user information', request('/', 'Host: ok.test@blocked.test\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['a Host with a port that is no number', request('/', 'Host: ok.test:http\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['a Host with a port out of range', request('/', 'Host: ok.test:65536\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['a Host with a percent-encoded name', request('/', 'Host: %62locked.test\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['a Host with a space inside', request('/', 'Host: ok .test\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['an IPv6 Host that is not an address', request('/', 'Host: [::g]\r\n'), 'COPROXY_HTTP_HOST_INVALID'],
    ['an absolute-form https target on a plain-HTTP port', request('https://ok.test/', 'Host: ok.test\r\n'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['an absolute-form target with user information', request('http://ok.test@blocked.test/', 'Host: ok.test\r\n'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['an absolute-form target without a host', request('http:///admin/x', 'Host: ok.test\r\n'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['an asterisk-form target with a method other than OPTIONS', request('*'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['a fragment in the target', request('/ok#/../admin/x'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['a NUL, encoded, in the path', request('/admin%00.png'), 'COPROXY_HTTP_TARGET_INVALID'],
    ['a percent sign not followed by two hex digits', request('/%zz/admin'), 'COPROXY_HTTP_TARGET_INVALID'],
  ];

  it.each(refused)('refuses %s with 400 and a client-error event, and the origin never sees it', async (_what, bytes, code) => {
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const reply = await rawRequest(under.registry, origin.port, bytes);

    expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(reply).toMatch(/\r\nConnection: close\r\n/);
    expect(origin.connections).toHaveLength(0);
    await until(() => under.events.some((e) => e.type === 'client-error'), 5000, 'the client-error event');
    expect(under.events.filter((e) => e.type === 'client-error')).toEqual([expect.objectContaining({ code, status: 400 })]);
  });

  const forwarded: readonly [what: string, bytes: string, seen: string][] = [
    ['an absolute-form target in origin-form, with the Host of its authority', request('http://ok.test:8080/a/b?q=/admin/x', 'Host: other.test\r\n'), 'GET /a/b?q=/admin/x host=ok.test:8080'],
    ['an absolute-form target without a path as /', request('http://OK.test', 'Host: ok.test\r\n'), 'GET / host=ok.test'],
    ['the path as it was sent, encodings and all', request('/ok/%7Efile/a%2fb;v=1?x=%2e%2e'), 'GET /ok/%7Efile/a%2fb;v=1?x=%2e%2e host=ok.test'],
    ['a query that looks like a blocked path', request('/ok?/admin/x'), 'GET /ok?/admin/x host=ok.test'],
    ['a host in canonical form', request('/', 'Host: OK.Test.:0080\r\n'), 'GET / host=ok.test:80'],
    ['an IPv6 host, compressed', request('/', 'Host: [0:0:0:0:0:0:0:1]:8080\r\n'), 'GET / host=[::1]:8080'],
    ['an HTTP/1.0 request without Host', request('/ok', '', '1.0'), 'GET /ok host='],
  ];

  it.each(forwarded)('forwards %s', async (_what, bytes, seen) => {
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const reply = await rawRequest(under.registry, origin.port, bytes);

    expect(reply).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(reply.split('\r\n\r\n')[1]).toBe(seen);
  });

  it('forwards OPTIONS * as it came', async () => {
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const reply = await rawRequest(under.registry, origin.port, 'OPTIONS * HTTP/1.1\r\nHost: ok.test\r\nConnection: close\r\n\r\n');

    expect(reply.split('\r\n\r\n')[1]).toBe('OPTIONS * host=ok.test');
  });

  it('answers a refused request in its turn after the pipelined ones before it', async () => {
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], { rules: RULES });
    const reply = await rawRequest(
      under.registry,
      origin.port,
      'GET /first HTTP/1.1\r\nHost: ok.test\r\n\r\nGET /second HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\nGET /third HTTP/1.1\r\nHost: ok.test\r\n\r\n',
    );

    expect(reply.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 400']);
    expect(reply).toContain('GET /first host=ok.test');
    expect(reply).not.toContain('/third');
  });

  it('passes header bytes above 0x7f (obs-text) on as they came, both ways', async () => {
    const heads: Buffer[] = [];
    await using origin = await startTcpOrigin((socket) => {
      socket.once('data', (chunk: Buffer) => {
        heads.push(chunk);
        socket.end(Buffer.from('HTTP/1.1 200 OK\r\nX-Reply: caf\u00e9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n', 'latin1'));
      });
    });
    const seen: string[] = [];
    await using under = await startProxy([origin.port], { inspectors: [{ name: 'spy', inspectRequest: (req) => void seen.push(req.path, String(req.headers['x-latin'])) }] });
    const client = await dial(under.registry, origin.port);
    client.end(Buffer.from('GET /caf%C3%A9 HTTP/1.1\r\nHost: ok.test\r\nX-Latin: caf\u00e9 \u00ff\r\n\r\n', 'latin1'));
    const reply = await readAll(client);

    // One byte each (0xe9, 0xff), not re-encoded as two UTF-8 bytes the inspectors never saw.
    expect(heads[0]?.includes(Buffer.from('\r\nX-Latin: caf\u00e9 \u00ff\r\n', 'latin1'))).toBe(true);
    expect(seen).toEqual(['/caf%C3%A9', 'caf\u00e9 \u00ff']);
    expect(reply.includes(Buffer.from('X-Reply: caf\u00e9\r\n', 'latin1'))).toBe(true);
  });

  it('gives inspectors the canonical view and every reading of the path', async () => {
    const seen: unknown[] = [];
    await using origin = await startReadingOrigin();
    await using under = await startProxy([origin.port], {
      inspectors: [{ name: 'spy', inspectRequest: (req) => void seen.push({ host: req.host, authority: req.authority, port: req.port, path: req.path, paths: req.paths, target: req.target }) }],
    });
    await rawRequest(under.registry, origin.port, request('http://Shop.Test.:81/a/%2e/b%2Fc\\d?q', 'Host: x.test\r\n'));

    expect(seen).toEqual([
      { host: 'shop.test', authority: 'shop.test:81', port: 81, path: '/a/b%2Fc%5Cd', paths: ['/a/b%2Fc%5Cd', '/a/b%2Fc/d', '/a/b/c%5Cd', '/a/b/c/d'], target: '/a/%2e/b%2Fc\\d?q' },
    ]);
  });
});
