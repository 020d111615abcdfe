import net from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { MatchRule } from '../../model/match-rule.js';
import {
  MIN_NFT_PRIORITY,
  type TableInfo,
  matchSelector,
  parseComment,
  parseTable,
  parseTableNames,
  renderChain,
  renderClaim,
  renderComment,
} from './tables.js';

const tableInfo: fc.Arbitrary<TableInfo> = fc.record({
  id: fc.stringMatching(/^[a-z0-9-]{1,32}$/),
  bit: fc.integer({ min: 0, max: 31 }).map((shift) => (1 << shift) >>> 0),
  priority: fc.integer({ min: MIN_NFT_PRIORITY, max: 2 ** 31 - 1 }),
  failMode: fc.constantFrom('open' as const, 'closed' as const),
  pid: fc.integer({ min: 1, max: 4_194_304 }),
  start: fc.maxSafeNat(),
});

const acme: TableInfo = { id: 'a', bit: 0x01000000, priority: 10, failMode: 'open', pid: 123, start: 456 };
const ACME_COMMENT = 'coproxy v1 id=a bit=0x01000000 prio=10 fail=open pid=123 start=456';

/** `nft -a list table inet coproxy-a` as nft 1.0.6 prints it for a live fail-open table. */
const ACTIVE_LISTING = `table inet coproxy-a { # handle 4 progname node
\tflags owner
\tcomment "${ACME_COMMENT}"

\tchain output { # handle 1
\t\ttype nat hook output priority filter + 10; policy accept;
\t\tmeta mark & 0x01000000 != 0x00000000 return # handle 2
\t\tip daddr { 10.0.0.0/8, 127.0.0.1 } tcp dport { 79-81, 8000-8099 } redirect to :4444 # handle 4
\t}
}
`;

/** The same listing for any table, with or without its chain. */
function listing(info: TableInfo, handle: number, active: boolean, name = `coproxy-${info.id}`): string {
  const chain = active
    ? `\n\tchain output { # handle 1\n\t\ttype nat hook output priority ${info.priority}; policy accept;\n\t\tmeta mark & 0x00000001 != 0x00000000 return # handle 2\n\t}\n`
    : '';
  return `table inet ${name} { # handle ${handle}\n${info.failMode === 'open' ? '\tflags owner\n' : ''}\tcomment "${renderComment(info)}"\n${chain}}\n`;
}

describe('table comments', () => {
  it('writes the documented comment', () => {
    expect(renderComment(acme)).toBe(ACME_COMMENT);
    expect(renderComment({ ...acme, bit: 0x80000000, priority: -199, failMode: 'closed' })).toBe(
      'coproxy v1 id=a bit=0x80000000 prio=-199 fail=closed pid=123 start=456',
    );
  });

  it('reads back what it writes, for any id, bit, priority, fail mode, pid and start time', () => {
    fc.assert(
      fc.property(tableInfo, (info) => {
        expect(parseComment(renderComment(info))).toEqual(info);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a comment naming more than one bit', () => {
    fc.assert(
      fc.property(tableInfo, fc.integer({ min: 0, max: 31 }), (info, shift) => {
        const other = (1 << shift) >>> 0;
        fc.pre(other !== info.bit);
        const comment = renderComment(info).replace(/bit=0x[0-9a-f]{8}/, `bit=0x${((info.bit | other) >>> 0).toString(16).padStart(8, '0')}`);
        expect(parseComment(comment)).toBeUndefined();
      }),
    );
  });

  it.each([
    ['no bit', 'coproxy v1 id=a bit=0x00000000 prio=10 fail=open pid=123 start=456'],
    ['two bits', 'coproxy v1 id=a bit=0x03000000 prio=10 fail=open pid=123 start=456'],
    ['another version', 'coproxy v2 id=a bit=0x01000000 prio=10 fail=open pid=123 start=456'],
    ['text after it', `${ACME_COMMENT} note=x`],
    ['text before it', `x ${ACME_COMMENT}`],
    ['a trailing newline', `${ACME_COMMENT}\n`],
    ['an unknown fail mode', 'coproxy v1 id=a bit=0x01000000 prio=10 fail=maybe pid=123 start=456'],
    ['an upper-case id', 'coproxy v1 id=A bit=0x01000000 prio=10 fail=open pid=123 start=456'],
    ['an id longer than 32 characters', `coproxy v1 id=${'a'.repeat(33)} bit=0x01000000 prio=10 fail=open pid=123 start=456`],
    ['a short bit', 'coproxy v1 id=a bit=0x1000000 prio=10 fail=open pid=123 start=456'],
    ['a missing field', 'coproxy v1 id=a bit=0x01000000 prio=10 fail=open pid=123'],
    ['another program’s comment', 'managed by firewalld'],
  ])('refuses a comment with %s', (_case, comment) => {
    expect(parseComment(comment)).toBeUndefined();
  });
});

describe('the claim', () => {
  it('creates an inert table that the kernel removes with its owner when failing open', () => {
    expect(renderClaim(acme, true)).toBe(`create table inet coproxy-a { flags owner; comment "${ACME_COMMENT}"; }`);
  });

  it('creates a table that outlives its process when failing closed', () => {
    const info = { ...acme, failMode: 'closed' as const };
    expect(renderClaim(info, false)).toBe(`create table inet coproxy-a { comment "${renderComment(info)}"; }`);
    expect(renderClaim(info, false)).not.toContain('flags owner');
  });
});

describe('the output chain', () => {
  const both = new Set<4 | 6>([4, 6]);
  const table = 'inet coproxy-a';
  const head = [
    `add chain ${table} output { type nat hook output priority 10; policy accept; }`,
    `add rule ${table} output meta mark & 0x01000000 != 0 return`,
  ];

  it('redirects every TCP flow of both families when the rule has no fields', () => {
    expect(renderChain(acme, {}, 4444, both).split('\n')).toEqual([
      ...head,
      `add rule ${table} output meta nfproto ipv4 meta l4proto tcp redirect to :4444`,
      `add rule ${table} output meta nfproto ipv6 meta l4proto tcp redirect to :4444`,
    ]);
  });

  it('lists single ports and ranges in one set', () => {
    const match: MatchRule = { ports: [80, [8000, 8099], 443] };
    expect(matchSelector(match, 4)).toBe('meta nfproto ipv4 meta l4proto tcp tcp dport { 80, 8000-8099, 443 }');
    expect(matchSelector(match, 6)).toBe('meta nfproto ipv6 meta l4proto tcp tcp dport { 80, 8000-8099, 443 }');
  });

  it('gives each family only its own hosts', () => {
    const match: MatchRule = { hosts: ['10.0.0.0/8', '2001:db8::/32', '127.0.0.1', '::1'], ports: [[79, 81]] };
    expect(matchSelector(match, 4)).toBe('meta nfproto ipv4 ip daddr { 10.0.0.0/8, 127.0.0.1 } meta l4proto tcp tcp dport { 79-81 }');
    expect(matchSelector(match, 6)).toBe('meta nfproto ipv6 ip6 daddr { 2001:db8::/32, ::1 } meta l4proto tcp tcp dport { 79-81 }');
  });

  it('writes no rule for a family none of the hosts belongs to', () => {
    const match: MatchRule = { hosts: ['192.0.2.0/24'] };
    expect(matchSelector(match, 6)).toBeUndefined();
    expect(renderChain(acme, match, 4444, both).split('\n')).toEqual([
      ...head,
      `add rule ${table} output meta nfproto ipv4 ip daddr { 192.0.2.0/24 } meta l4proto tcp redirect to :4444`,
    ]);
    const v6Only = renderChain(acme, { hosts: ['fd00::/8'] }, 4444, both);
    expect(v6Only).not.toContain('ipv4');
    expect(v6Only).toContain(`add rule ${table} output meta nfproto ipv6 ip6 daddr { fd00::/8 } meta l4proto tcp redirect to :4444`);
  });

  it('keeps to the family the rule names', () => {
    expect(matchSelector({ family: 4 }, 6)).toBeUndefined();
    expect(matchSelector({ family: 6 }, 4)).toBeUndefined();
    expect(renderChain(acme, { family: 6, ports: [443] }, 4444, both).split('\n')).toEqual([
      ...head,
      `add rule ${table} output meta nfproto ipv6 meta l4proto tcp tcp dport { 443 } redirect to :4444`,
    ]);
  });

  it('writes no IPv6 rule when the redirector listens on IPv4 only', () => {
    expect(renderChain(acme, { ports: [80] }, 4444, new Set([4])).split('\n')).toEqual([
      ...head,
      `add rule ${table} output meta nfproto ipv4 meta l4proto tcp tcp dport { 80 } redirect to :4444`,
    ]);
  });

  it('writes only the chain and its return rule when nothing can match', () => {
    expect(renderChain(acme, { family: 4 }, 4444, new Set([6])).split('\n')).toEqual(head);
  });

  it('puts every host in the rule of its family and nowhere else', () => {
    const host = fc.oneof(
      fc.ipV4(),
      fc.ipV6(),
      fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([address, prefix]) => `${address}/${prefix}`),
      fc.tuple(fc.ipV6(), fc.integer({ min: 0, max: 128 })).map(([address, prefix]) => `${address}/${prefix}`),
    );
    fc.assert(
      fc.property(fc.uniqueArray(host, { minLength: 1, maxLength: 8 }), (hosts) => {
        for (const family of [4, 6] as const) {
          const own = hosts.filter((h) => net.isIP(h.split('/')[0] ?? '') === family);
          const selector = matchSelector({ hosts }, family);
          if (own.length === 0) expect(selector).toBeUndefined();
          else expect(selector).toContain(`daddr { ${own.join(', ')} }`);
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('reading tables back', () => {
  it('finds the coproxy tables among all tables and ignores the others', () => {
    const tables = [
      'table inet filter',
      'table inet coproxy-a',
      'table ip coproxy-b',
      'table inet coproxy-acme-web-2',
      'table inet coproxyish',
      'table inet coproxy-UPPER',
      `table inet coproxy-${'x'.repeat(33)}`,
      'table inet firewalld',
      '',
    ].join('\n');
    expect(parseTableNames(tables)).toEqual(['coproxy-a', 'coproxy-acme-web-2']);
    expect(parseTableNames('')).toEqual([]);
  });

  it('reads a live table as nft lists it', () => {
    expect(parseTable(ACTIVE_LISTING)).toEqual({ ...acme, name: 'coproxy-a', handle: 4, active: true });
  });

  it('reads a claim that has no chain yet as inactive', () => {
    const comment = 'coproxy v1 id=b bit=0x02000000 prio=-199 fail=closed pid=77 start=88';
    expect(parseTable(`table inet coproxy-b { # handle 3\n\tcomment "${comment}"\n}\n`)).toEqual({
      id: 'b',
      bit: 0x02000000,
      priority: -199,
      failMode: 'closed',
      pid: 77,
      start: 88,
      name: 'coproxy-b',
      handle: 3,
      active: false,
    });
  });

  it('reads back any table it could have written', () => {
    fc.assert(
      fc.property(tableInfo, fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.boolean(), (info, handle, active) => {
        expect(parseTable(listing(info, handle, active))).toEqual({ ...info, name: `coproxy-${info.id}`, handle, active });
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a table whose comment names another id', () => {
    expect(parseTable(ACTIVE_LISTING.replace('id=a ', 'id=b '))).toBeUndefined();
    expect(parseTable(listing({ ...acme, id: 'b' }, 5, false, 'coproxy-a'))).toBeUndefined();
  });

  it('ignores a table coproxy did not write', () => {
    const firewalld = 'table inet firewalld { # handle 7\n\tchain filter_INPUT { # handle 1\n\t\ttype filter hook input priority filter + 10; policy accept;\n\t}\n}\n';
    expect(parseTable(firewalld)).toBeUndefined();
    // A foreign name carrying a coproxy comment is still not a coproxy table.
    expect(parseTable(listing(acme, 7, true, 'firewalld'))).toBeUndefined();
    expect(parseTable(ACTIVE_LISTING.replace(ACME_COMMENT, 'managed by someone else'))).toBeUndefined();
    expect(parseTable(ACTIVE_LISTING.replace(/\tcomment .*\n/, ''))).toBeUndefined();
  });
});
