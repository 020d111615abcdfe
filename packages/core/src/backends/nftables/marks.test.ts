import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidOptionsError } from '../../model/errors.js';
import { type BitHolder, DEFAULT_MARK_MASK, bitsOf, candidateBits, recordsFromMark, resolveMarkMask } from './marks.js';

/** Asserts that `resolve` throws the typed error naming `option`, the one a user is told to fix. */
function expectInvalid(resolve: () => number, option: string): void {
  expect(resolve).toThrow(InvalidOptionsError);
  expect(resolve).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option }));
}
// At most 16 bits: a flow carries at most MAX_REDIRECTS records.
const mask = fc.integer({ min: 1, max: 0xffffffff }).filter((value) => popcount(value) <= 16);
const id = fc.stringMatching(/^[a-z0-9-]{1,32}$/);
const bit = (shift: number): number => (1 << shift) >>> 0;

function popcount(value: number): number {
  let count = 0;
  for (let v = value >>> 0; v !== 0; v >>>= 1) count += v & 1;
  return count;
}

describe('the mark mask', () => {
  it('defaults to the top byte', () => {
    expect(DEFAULT_MARK_MASK).toBe(0xff000000);
    expect(resolveMarkMask(undefined, undefined)).toBe(0xff000000);
    expect(resolveMarkMask(undefined, '')).toBe(0xff000000);
    expect(resolveMarkMask(undefined, '  ')).toBe(0xff000000);
  });

  it('takes the option over the environment, even a broken one', () => {
    expect(resolveMarkMask(0x00f00000, '0x0000ff00')).toBe(0x00f00000);
    expect(resolveMarkMask(0x00f00000, 'lots')).toBe(0x00f00000);
    expect(resolveMarkMask(0xffff0000, undefined)).toBe(0xffff0000);
  });

  it.each([
    ['0x0000ff00', 0xff00],
    ['0XFF', 0xff],
    ['0xffff0000', 0xffff0000],
    ['65280', 0xff00],
    ['4294901760', 0xffff0000],
    [' 0xf0 \n', 0xf0],
  ])('reads COPROXY_MARK_MASK=%j', (env, expected) => {
    expect(resolveMarkMask(undefined, env)).toBe(expected);
  });

  it('reads any mask written in hex or decimal', () => {
    fc.assert(
      fc.property(mask, (value) => {
        expect(resolveMarkMask(undefined, `0x${value.toString(16)}`)).toBe(value);
        expect(resolveMarkMask(undefined, String(value))).toBe(value);
        expect(resolveMarkMask(value, undefined)).toBe(value);
      }),
    );
  });

  it('refuses a mask wider than the hop bound, whose marks could not be read back as records', () => {
    expect(() => resolveMarkMask(0x0001ffff, undefined)).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'markMask' }));
    expect(() => resolveMarkMask(undefined, '0xffffffff')).toThrow(expect.objectContaining({ option: 'COPROXY_MARK_MASK' }));
  });

  it.each(['lots', 'ff000000', '0x', '0x1g', '0x100000000', '4294967296', '0', '0x0', '0x00000000', '-1', '1.5', '1e3', '0b1'])(
    'refuses COPROXY_MARK_MASK=%j',
    (env) => {
      expectInvalid(() => resolveMarkMask(undefined, env), 'COPROXY_MARK_MASK');
    },
  );

  it.each([0, -1, 2 ** 32, 1.5, Number.NaN, Number.POSITIVE_INFINITY])('refuses the option markMask: %d', (value) => {
    expectInvalid(() => resolveMarkMask(value, undefined), 'markMask');
    expectInvalid(() => resolveMarkMask(value, '0xff'), 'markMask');
  });
});

describe('bits of a mask', () => {
  it('lists single bits from low to high', () => {
    expect(bitsOf(0xff000000)).toEqual([0x01000000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80000000]);
    expect(bitsOf(0b1010)).toEqual([2, 8]);
    expect(bitsOf(0)).toEqual([]);
  });

  it('gives back exactly the mask, one bit at a time', () => {
    fc.assert(
      fc.property(mask, (value) => {
        const bits = bitsOf(value);
        expect(bits.length).toBe(popcount(value));
        for (const b of bits) expect(popcount(b)).toBe(1);
        expect([...bits].sort((a, b) => a - b)).toEqual(bits);
        expect(bits.reduce((acc, b) => (acc | b) >>> 0, 0)).toBe(value);
      }),
    );
  });
});

describe('the order a redirector tries bits in', () => {
  it('is the same every time for the same id and mask', () => {
    fc.assert(
      fc.property(id, mask, (name, value) => {
        expect(candidateBits(name, value)).toEqual(candidateBits(name, value));
      }),
    );
  });

  it('is the mask’s bits, rotated', () => {
    fc.assert(
      fc.property(id, mask, (name, value) => {
        const bits = bitsOf(value);
        const order = candidateBits(name, value);
        const start = bits.indexOf(order[0] ?? -1);
        expect(start).toBeGreaterThanOrEqual(0);
        expect(order).toEqual([...bits.slice(start), ...bits.slice(0, start)]);
      }),
    );
  });

  it('spreads redirectors started together over the mask', () => {
    const firsts = new Set(Array.from({ length: 64 }, (_, i) => candidateBits(`vendor-${i}`, DEFAULT_MARK_MASK)[0]));
    expect(firsts.size).toBeGreaterThanOrEqual(4);
  });

  it('starts with the previous bit when it is in the mask', () => {
    fc.assert(
      fc.property(id, mask, fc.nat(), (name, value, pick) => {
        const bits = bitsOf(value);
        const previous = bits[pick % bits.length] ?? -1;
        const order = candidateBits(name, value, previous);
        expect(order[0]).toBe(previous);
        expect(order.slice(1)).toEqual(candidateBits(name, value).filter((b) => b !== previous));
      }),
    );
  });

  it('ignores a previous bit outside the mask', () => {
    fc.assert(
      fc.property(id, fc.integer({ min: 1, max: 0xfffffffe }), fc.integer({ min: 0, max: 31 }), (name, value, shift) => {
        fc.pre(((value & bit(shift)) >>> 0) === 0);
        expect(candidateBits(name, value, bit(shift))).toEqual(candidateBits(name, value));
      }),
    );
    expect(candidateBits('a', 0xff000000, 0x1)).not.toContain(0x1);
  });
});

describe('records read from a socket mark', () => {
  const holders = new Map<number, BitHolder>([
    [0x01000000, { id: 'late', priority: 100 }],
    [0x02000000, { id: 'early', priority: -50 }],
    [0x04000000, { id: 'middle', priority: 0 }],
    [0x00000001, { id: 'outside', priority: -199 }],
  ]);

  it('lists the redirectors whose bits are set, in the order their chains run', () => {
    expect(recordsFromMark(0x07000000, 0xff000000, holders).redirectedBy).toEqual(['early', 'middle', 'late']);
    expect(recordsFromMark(0x01000000, 0xff000000, holders).redirectedBy).toEqual(['late']);
  });

  it('orders redirectors of equal priority by id', () => {
    const tied = new Map<number, BitHolder>([
      [0x01000000, { id: 'zeta', priority: 5 }],
      [0x02000000, { id: 'alpha', priority: 5 }],
    ]);
    expect(recordsFromMark(0x03000000, 0xff000000, tied).redirectedBy).toEqual(['alpha', 'zeta']);
  });

  it('ignores bits outside the mask, even ones a table claims', () => {
    expect(recordsFromMark(0x02000001, 0xff000000, holders).redirectedBy).toEqual(['early']);
    expect(recordsFromMark(0x00ffffff, 0xff000000, holders).redirectedBy).toEqual([]);
  });

  it('shows a set bit that no table explains, after the known ones', () => {
    expect(recordsFromMark(0x81000000, 0xff000000, holders).redirectedBy).toEqual(['late', 'mark-0x80000000']);
    expect(recordsFromMark(0x18000000, 0xff000000, new Map()).redirectedBy).toEqual(['mark-0x08000000', 'mark-0x10000000']);
  });

  it('is empty for an empty mark', () => {
    const records = recordsFromMark(0, 0xff000000, holders);
    expect(records.hops).toBe(0);
    expect(records.redirectedBy).toEqual([]);
  });

  it('has one redirect per set bit inside the mask, in priority order', () => {
    const priority = fc.integer({ min: -199, max: 2 ** 31 - 1 });
    const known = fc.uniqueArray(fc.tuple(fc.integer({ min: 24, max: 31 }), id, priority), { selector: ([shift]) => shift, maxLength: 8 });
    fc.assert(
      fc.property(known, fc.integer({ min: 0, max: 0xffffffff }), (entries, mark) => {
        fc.pre(new Set(entries.map(([, name]) => name)).size === entries.length);
        const map = new Map(entries.map(([shift, name, prio]) => [bit(shift), { id: name, priority: prio }]));
        const ids = recordsFromMark(mark, DEFAULT_MARK_MASK, map).redirectedBy;
        expect(ids.length).toBe(popcount((mark & DEFAULT_MARK_MASK) >>> 0));
        const priorities = ids.map((name) => [...map.values()].find((h) => h.id === name)?.priority ?? Number.MAX_SAFE_INTEGER);
        expect([...priorities].sort((a, b) => a - b)).toEqual(priorities);
      }),
    );
  });
});
