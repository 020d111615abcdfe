import { createHash } from 'node:crypto';
import { RedirectRecords } from '../../model/redirect-records.js';
import { hex32 } from './tables.js';

// The mask option is checked for every backend (mark-mask.ts); only this backend uses it.
export { DEFAULT_MARK_MASK, resolveMarkMask } from '../mark-mask.js';

/** The single-bit values of a mask, low to high. */
export function bitsOf(mask: number): number[] {
  const bits: number[] = [];
  for (let i = 0; i < 32; i++) if (((mask >>> i) & 1) === 1) bits.push((1 << i) >>> 0);
  return bits;
}

/**
 * The order in which a redirector tries bits: its previous bit first (a restart keeps its
 * records' meaning), then the mask's bits rotated to start at one derived from its id, so
 * a redirector usually gets the same bit each time even without state, and redirectors
 * started together do not all contend for the lowest bit.
 */
export function candidateBits(id: string, mask: number, previous?: number): number[] {
  const bits = bitsOf(mask);
  const start = createHash('sha256').update(id).digest().readUInt32BE(0) % bits.length;
  const rotated = [...bits.slice(start), ...bits.slice(0, start)];
  if (previous === undefined || !rotated.includes(previous)) return rotated;
  return [previous, ...rotated.filter((bit) => bit !== previous)];
}

/** What the redirect layer knows of a bit: the redirector holding it and its priority. */
export interface BitHolder {
  readonly id: string;
  readonly priority: number;
}

/**
 * Records from a socket mark: the redirectors whose bits are set, in the order their
 * chains run (priority), which is the order they redirected the flow. A set bit that no
 * table explains (a redirector gone since, or another program's mark inside the mask) is
 * kept visible as `mark-0x<bit>` rather than dropped.
 */
export function recordsFromMark(mark: number, mask: number, holders: ReadonlyMap<number, BitHolder>): RedirectRecords {
  const seen: BitHolder[] = [];
  for (const bit of bitsOf((mark & mask) >>> 0)) {
    seen.push(holders.get(bit) ?? { id: `mark-${hex32(bit)}`, priority: Number.MAX_SAFE_INTEGER });
  }
  seen.sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1));
  let records = RedirectRecords.empty;
  for (const holder of seen) records = records.withRedirect(holder.id);
  return records;
}
