import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RedirectRecords } from '../../model/redirect-records.js';
import type { Destination, MatchRule, PortSpec } from '../../model/match-rule.js';
import { compileMatch } from '../../model/match-rule.js';
import { candidates, type Classifiable } from './classify.js';

/**
 * The redirect layer in miniature: a table of redirectors and one flow that crosses it.
 * Each hop asks `candidates` who takes the flow next; the redirector that does connects
 * onward with the records it chooses to pass on.
 */

interface Entry extends Classifiable {
  readonly priority: number;
  /** A naive vendor starts its onward leg afresh instead of passing on the records it got. */
  readonly naive: boolean;
}

/** The blocks rules may name, and which addresses of the pool each contains. */
const BLOCKS: Readonly<Record<string, readonly string[]>> = {
  '127.0.0.0/8': ['127.0.0.1'],
  '10.0.0.0/8': ['10.1.2.3'],
  '192.0.2.0/24': ['192.0.2.1'],
  '::1/128': ['::1'],
  '2001:db8::/32': ['2001:db8::1'],
};
const DESTINATIONS: readonly Omit<Destination, 'port'>[] = [
  { address: '127.0.0.1', family: 4 },
  { address: '10.1.2.3', family: 4 },
  { address: '192.0.2.1', family: 4 },
  { address: '198.51.100.7', family: 4 },
  { address: '::1', family: 6 },
  { address: '2001:db8::1', family: 6 },
];
const COMMON_PORTS = [80, 443, 8080];

const port = fc.oneof(fc.constantFrom(...COMMON_PORTS), fc.integer({ min: 1, max: 65535 }));
const portSpec: fc.Arbitrary<PortSpec> = fc.oneof(
  port,
  fc.tuple(port, port).map(([a, b]): PortSpec => [Math.min(a, b), Math.max(a, b)]),
);
// Lists are never empty: `ports: []` and `hosts: []` do not mean the same thing (see the report).
const rule: fc.Arbitrary<MatchRule> = fc.record(
  {
    ports: fc.array(portSpec, { minLength: 1, maxLength: 3 }),
    hosts: fc.subarray(Object.keys(BLOCKS), { minLength: 1 }),
    family: fc.constantFrom(4 as const, 6 as const),
  },
  { requiredKeys: [] },
);
const destination: fc.Arbitrary<Destination> = fc
  .tuple(fc.constantFrom(...DESTINATIONS), port)
  .map(([endpoint, p]) => ({ ...endpoint, port: p }));

const redirector = fc.record({
  priority: fc.integer({ min: -5, max: 5 }),
  rule,
  naive: fc.constant(false),
});
const table = fc
  .uniqueArray(fc.stringMatching(/^[a-z][a-z0-9-]{0,11}$/), { minLength: 1, maxLength: 8 })
  .chain((ids) => fc.tuple(...ids.map((id) => redirector.map((r) => ({ id, ...r })))));

/** As the registry keeps it: by priority, then by id. */
function sorted(entries: readonly { id: string; priority: number; rule: MatchRule; naive: boolean }[]): Entry[] {
  return entries
    .map(({ id, priority, rule: r, naive }) => ({ id, priority, naive, match: compileMatch(r) }))
    .sort((a, b) => a.priority - b.priority || a.id.localeCompare(b.id));
}

/** What the rule means, written out by hand rather than through `net.BlockList`. */
function ruleMatches(r: MatchRule, to: Destination): boolean {
  if (r.family !== undefined && r.family !== to.family) return false;
  const inPorts = (spec: PortSpec): boolean =>
    typeof spec === 'number' ? spec === to.port : spec[0] <= to.port && to.port <= spec[1];
  if (r.ports !== undefined && !r.ports.some(inPorts)) return false;
  if (r.hosts !== undefined && !r.hosts.some((block) => BLOCKS[block]?.includes(to.address))) return false;
  return true;
}

function first<TValue>(values: Iterable<TValue>): TValue | undefined {
  for (const value of values) return value;
  return undefined;
}

/** Follows the flow hop by hop until it reaches its origin or `maxHops` redirects happened. */
function simulate(entries: readonly Entry[], to: Destination, maxHops: number) {
  const accepted: string[] = [];
  let records = RedirectRecords.empty;
  while (accepted.length < maxHops) {
    const next = first(candidates(entries, to, records));
    if (next === undefined) return { accepted, reachedOrigin: true };
    accepted.push(next.id);
    records = next.naive ? RedirectRecords.empty.withRedirect(next.id) : records.withRedirect(next.id);
  }
  return { accepted, reachedOrigin: false };
}

const countOf = (ids: readonly string[], id: string): number => ids.filter((x) => x === id).length;

describe('classifying a flow across a chain of redirectors', () => {
  it('agrees with the match rules as written', () => {
    fc.assert(
      fc.property(rule, destination, (r, to) => {
        expect(compileMatch(r).matches(to)).toBe(ruleMatches(r, to));
      }),
      { numRuns: 200 },
    );
  });

  it('lets every matching redirector take the flow exactly once, in priority order, when records are passed on', () => {
    fc.assert(
      fc.property(table, destination, (drawn, to) => {
        const entries = sorted(drawn);
        const { accepted, reachedOrigin } = simulate(entries, to, 50);

        // I2: the flow reaches its origin within as many hops as there are redirectors.
        expect(reachedOrigin).toBe(true);
        expect(accepted.length).toBeLessThanOrEqual(entries.length);
        // I1: no redirector sees the flow twice.
        expect(new Set(accepted).size).toBe(accepted.length);
        // Every redirector whose rule matches takes it, in table order; none other does.
        const matching = entries.filter((e) => ruleMatches(e.match.rule, to));
        expect(accepted).toEqual(matching.map((e) => e.id));
        const priorities = accepted.map((id) => entries.find((e) => e.id === id)!.priority);
        expect(priorities).toEqual([...priorities].sort((a, b) => a - b));
      }),
    );
  });

  it('offers nothing to a redirector already in the records, whatever else they hold', () => {
    fc.assert(
      fc.property(table, destination, fc.nat(), (drawn, to, seed) => {
        const entries = sorted(drawn);
        const already = entries.filter((_, i) => (seed >> i) & 1).map((e) => e.id);
        const records = already.reduce((acc, id) => acc.withRedirect(id), RedirectRecords.empty);
        const offered = [...candidates(entries, to, records)].map((e) => e.id);
        const expected = entries.filter((e) => ruleMatches(e.match.rule, to) && !already.includes(e.id));
        expect(offered).toEqual(expected.map((e) => e.id));
      }),
    );
  });

  it('loops for ever when two matching vendors each start their onward leg with fresh records', () => {
    fc.assert(
      fc.property(table, destination, fc.nat(), fc.nat(), (drawn, to, a, b) => {
        fc.pre(drawn.length >= 2);
        const i = a % drawn.length;
        const j = (i + 1 + (b % (drawn.length - 1))) % drawn.length;
        // Both naive vendors take everything, so both match the flow.
        const entries = sorted(drawn.map((r, k) => (k === i || k === j ? { ...r, rule: {}, naive: true } : r)));
        const { accepted, reachedOrigin } = simulate(entries, to, 50);

        expect(reachedOrigin).toBe(false);
        expect(accepted).toHaveLength(50);
        // The two naive vendors hand the flow to each other, each time taking it afresh.
        const naiveIds = [drawn[i]!.id, drawn[j]!.id];
        const naiveTurns = accepted.filter((id) => naiveIds.includes(id));
        naiveTurns.slice(1).forEach((id, n) => expect(id).not.toBe(naiveTurns[n]));
        for (const id of naiveIds) expect(countOf(accepted, id)).toBeGreaterThanOrEqual(3);
      }),
    );
  });

  it('hands the flow again to every earlier vendor when a later vendor drops the records', () => {
    fc.assert(
      fc.property(table, destination, fc.nat(), (drawn, to, a) => {
        const k = a % drawn.length;
        const naiveId = drawn[k]!.id;
        const entries = sorted(drawn.map((r, n) => (n === k ? { ...r, rule: {}, naive: true } : r)));
        const { accepted, reachedOrigin } = simulate(entries, to, 50);

        expect(reachedOrigin).toBe(true);
        const position = entries.findIndex((e) => e.id === naiveId);
        entries.forEach((e, n) => {
          const times = !ruleMatches(e.match.rule, to) ? 0 : n < position ? 2 : 1;
          expect(countOf(accepted, e.id), e.id).toBe(times);
        });
      }),
    );
  });

  it('shows the loop with two concrete vendors: the earlier one accepts twice when only the later one is naive', () => {
    const to: Destination = { address: '10.1.2.3', port: 443, family: 4 };
    const vendor = (id: string, priority: number, naive: boolean) => ({ id, priority, rule: { ports: [443] }, naive });

    const bothPropagate = sorted([vendor('acme-av', 10, false), vendor('dlp', 20, false)]);
    expect(simulate(bothPropagate, to, 50)).toEqual({ accepted: ['acme-av', 'dlp'], reachedOrigin: true });

    const laterNaive = sorted([vendor('acme-av', 10, false), vendor('dlp', 20, true)]);
    expect(simulate(laterNaive, to, 50)).toEqual({ accepted: ['acme-av', 'dlp', 'acme-av'], reachedOrigin: true });

    const bothNaive = sorted([vendor('acme-av', 10, true), vendor('dlp', 20, true)]);
    const looping = simulate(bothNaive, to, 50);
    expect(looping.reachedOrigin).toBe(false);
    expect(looping.accepted.slice(0, 4)).toEqual(['acme-av', 'dlp', 'acme-av', 'dlp']);
  });
});
