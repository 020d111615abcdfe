import { createHash } from 'node:crypto';
import { InvalidOptionsError } from '../../errors.js';
import { MAX_REDIRECTS, RedirectRecords } from '../../records/redirect-records.js';
import { hex32 } from './tables.js';

/**
 * The socket-mark bits coproxy allocates from unless told otherwise: the top byte.
 *
 * Marks are shared by everything on a host, so the default keeps clear of the marks the
 * common networking stacks use: Kubernetes kube-proxy (0x4000, 0x8000), Istio (0x539 under
 * mask 0xfff), Cilium (the 0x0f00 magic nibble), WireGuard's wg-quick (0xca6c) and
 * Tailscale (0xff0000). Cilium and Calico give meaning to the top 16 bits as well: Cilium
 * only together with its magic nibble, which coproxy never sets; Calico (default mask
 * 0xffff0000) truly overlaps, so on a Calico node set `COPROXY_MARK_MASK` to bits Calico's
 * `iptablesMarkMask` leaves free. Eight bits: eight redirectors on one host at once.
 */
export const DEFAULT_MARK_MASK = 0xff000000;

/** The mask from the option, else `COPROXY_MARK_MASK` (hex `0x...` or decimal), else the default. */
export function resolveMarkMask(option: number | undefined, env: string | undefined): number {
  if (option !== undefined) return checkMask(option, 'markMask');
  if (env === undefined || env.trim() === '') return DEFAULT_MARK_MASK;
  const text = env.trim();
  const value = /^0x[0-9a-f]{1,8}$/i.test(text) ? Number.parseInt(text.slice(2), 16) : /^\d{1,10}$/.test(text) ? Number(text) : NaN;
  return checkMask(value, 'COPROXY_MARK_MASK');
}

function checkMask(value: number, option: string): number {
  if (!Number.isInteger(value) || value <= 0 || value > 0xffffffff) {
    throw new InvalidOptionsError(`must be a non-zero 32-bit mask such as 0xff000000, got ${String(value)}`, option);
  }
  // A flow carries at most MAX_REDIRECTS records: a wider mask could yield marks that
  // cannot be read back as records.
  if (bitsOf(value >>> 0).length > MAX_REDIRECTS) {
    throw new InvalidOptionsError(`may have at most ${MAX_REDIRECTS} bits (the hop bound), got ${hex32(value)}`, option);
  }
  return value >>> 0;
}

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
