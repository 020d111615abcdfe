import fc from 'fast-check';

/**
 * Requests for the differential proof: valid ones, edge cases, and mutations of both, as
 * the bytes a client sends. Built from pieces that make parsers disagree: case games in
 * names and hosts, whitespace, repeated headers, every request-target form, percent-escapes
 * of separators and dots, backslashes, `;` parameters, obs-fold, bare LF, stray bytes.
 */
export interface RequestCase {
  /** One request, or two pipelined on one connection. */
  readonly requests: readonly string[];
  /** Bytes overwritten after rendering: `[offset, byte]` (offset modulo the length). */
  readonly mutations: readonly (readonly [number, number])[];
}

/** Mostly one of `usual`, sometimes one of `odd`: most cases must reach the origins for the proof to say much. */
function mostly<TValue>(usual: readonly TValue[], odd: readonly TValue[], weight = 10): fc.Arbitrary<TValue> {
  return fc.oneof({ weight, arbitrary: fc.constantFrom(...usual) }, { weight: 1, arbitrary: fc.constantFrom(...odd) });
}

const METHOD = mostly(['GET', 'GET', 'GET', 'POST', 'HEAD', 'OPTIONS', 'DELETE', 'PUT', 'PATCH'], ['M-SEARCH', 'PROPFIND', 'get', 'CONNECT', 'TRACE', 'GET\u0000']);

// Pieces a path is made of: separators, dots and their escapes, backslashes, parameters,
// escapes of every kind; then the rarer ones origins refuse or disagree on.
const PATH_PIECE = mostly(
  [
    'admin', 'ok', 'a', 'B', 'x.png', 'index.html', 'public',
    '/', '/', '/', '/', '/', '//', '.', '..', '...',
    '%2e', '%2E', '%2e%2e', '.%2e', '%2f', '%2F', '%5c', '%5C', '\\', ';', ';p=1', ';jsessionid=x', '..;',
    '%41', '%61dmin', '%7e', '%7E', '~', '%25', '%252e', '%252f', '%2525', '%0a', '%0d', '%09', '%20', '%ff', '%c0%ae', '%3b', '%3f', '%23',
    '%C3%A9', '\u00c3\u00a9', '\u00ff', '*', '@', ':', '!', '$', '&', "'", '(', ')', '+', ',', '=', '|', '^', '`', '{', '}', '"', '<', '>', '[', ']',
  ],
  ['%', '%2', '%zz', '%00', '%u002e', '#', '#frag', '?'],
  15,
);
const QUERY_PIECE = fc.constantFrom('x=1', '/../admin', '%2F', 'a=%00', '', '?', '&b', '/admin/x', '%zz', '..%2f');

const PATH = fc.array(PATH_PIECE, { maxLength: 10 }).map((pieces) => `/${pieces.join('')}`);
const QUERY = fc.option(fc.array(QUERY_PIECE, { minLength: 1, maxLength: 3 }).map((pieces) => `?${pieces.join('')}`), { nil: '', freq: 2 });

const HOST = mostly(
  [
    'a.test', 'a.test', 'a.test', 'blocked.test', 'BLOCKED.Test', 'blocked.test.', 'Blocked.Test.:8080', 'a.test:80', 'a.test:080', 'a.test:8080', 'a.test:0',
    '[::1]', '[0:0::1]:81', '[::FFFF:127.0.0.1]', '127.0.0.1', '127.1', '0x7f.0.0.1', 'a_b.test', 'xn--bcher-kva.test', '-a.test', '1.2.3.4.5', '',
  ],
  ['a.test:', 'a.test:65536', '[fe80::1%25eth0]', '[::g]', '[::1', 'a..test', '.a.test', '%61.test', 'a.test@b.test', '\u00c3\u00a9.test', 'a.test/x', 'a.test\\x', 'a.test,b.test', 'a test', 'a.test:80:80', 'a.test?', 'a.test#'],
  6,
);

const TARGET = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(PATH, QUERY).map(([p, q]) => p + q) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(mostly(['http', 'HTTP', 'Http'], ['https', 'ws', 'ftp', 'h']), mostly([''], ['u@', 'u:p@', 'a.test@']), HOST, fc.option(PATH, { nil: '', freq: 4 }), QUERY)
      .map(([s, u, h, p, q]) => `${s}://${u}${h}${p}${q}`),
  },
  { weight: 1, arbitrary: fc.constantFrom('*', 'a.test:80', 'a.test', 'http:/a.test/', 'http:a.test/', '//a.test/x', 'http//a.test', '\\admin') },
);

const HOST_HEADER = fc
  .tuple(mostly(['Host', 'Host', 'host', 'HOST', 'hOsT'], ['Host ', ' Host', 'Ho\tst', 'X-Host']), fc.constantFrom('', ' ', ' ', '\t', '  ', ' \t'), HOST, fc.constantFrom('', '', ' ', '\t'))
  .map(([n, a, v, b]) => `${n}:${a}${v}${b}`);

const OTHER_HEADER = mostly(
  [
    'X-Tag: one', 'X-Tag: two', 'x-tag: Three', 'User-Agent: fuzz/1', 'User-Agent: other/2', 'Accept: */*', 'Cookie: a=1', 'Cookie: b=2',
    'X-Forwarded-Host: blocked.test', 'Forwarded: host=blocked.test', 'Content-Length: 0', 'Content-Length: 3', 'Transfer-Encoding: chunked',
    'Connection: keep-alive', 'Connection: x-tag', 'Keep-Alive: timeout=5', 'X-Empty:', 'X-Space:   padded   ', 'X-Latin: caf\u00e9',
  ],
  ['Connection: host', 'Connection: content-length', 'X-Fold: a\r\n b', 'X-Bare: lf\nX-After: y', 'Bad Name: x', 'X-Ctl: a\u0001b'],
);
const VERSION = mostly(['1.1', '1.1', '1.1', '1.0'], ['1.2', '2.0', '0.9', '1.01']);
const SPACE = mostly([' '], ['  ', '\t'], 30);
const EOL = mostly(['\r\n'], ['\n'], 30);

/** One request's bytes: request line, headers (Host ones and others shuffled together), body for a numeric Content-Length. */
const REQUEST = fc
  .record({
    method: METHOD,
    target: TARGET,
    version: VERSION,
    sp1: SPACE,
    sp2: SPACE,
    eol: EOL,
    hosts: fc.array(HOST_HEADER, { minLength: 3, maxLength: 3 }),
    hostCount: mostly([1], [0, 2, 3]),
    others: fc.array(OTHER_HEADER, { maxLength: 4 }),
    order: fc.nat(),
  })
  .map((r) => {
    const hosts = r.hosts.slice(0, r.hostCount);
    const headers: string[] = [...r.others];
    hosts.forEach((h, i) => headers.splice((r.order + i) % (headers.length + 1), 0, h));
    const chunked = headers.some((h) => /^transfer-encoding: chunked$/i.test(h));
    const length = headers.find((h) => /^content-length: \d+$/i.test(h));
    const body = chunked ? '3\r\nabc\r\n0\r\n\r\n' : length === undefined ? '' : 'abc'.slice(0, Number(length.split(':')[1]));
    return `${r.method}${r.sp1}${r.target}${r.sp2}HTTP/${r.version}${r.eol}${headers.map((h) => `${h}${r.eol}`).join('')}${r.eol}${body}`;
  });

/** Most cases are left as generated; some get a few bytes overwritten with ones that matter to parsers. */
const MUTATIONS = fc.oneof(
  { weight: 8, arbitrary: fc.constant([] as (readonly [number, number])[]) },
  {
    weight: 1,
    arbitrary: fc.array(fc.tuple(fc.nat(), fc.constantFrom(0x00, 0x09, 0x0a, 0x0d, 0x20, 0x25, 0x2e, 0x2f, 0x3a, 0x3f, 0x40, 0x5c, 0x7f, 0x80, 0xff, 0x41, 0x61)), { minLength: 1, maxLength: 3 }),
  },
);

export const requestCase: fc.Arbitrary<RequestCase> = fc.record({
  requests: fc.array(REQUEST, { minLength: 1, maxLength: 2 }),
  mutations: MUTATIONS,
});

/** The bytes a case sends on its connection. */
export function caseBytes(c: RequestCase): Buffer {
  const bytes = Buffer.from(c.requests.join(''), 'latin1');
  for (const [offset, byte] of c.mutations) bytes[offset % bytes.length] = byte;
  return bytes;
}

/** The case a seed stands for, as `pnpm fuzz --seed <n> --count 1` regenerates it. */
export function caseOfSeed(seed: number): RequestCase {
  return fc.sample(requestCase, { seed, numRuns: 1 })[0]!;
}
