import { InvalidOptionsError } from '../model/errors.js';
import { MAX_REDIRECTS } from '../model/redirect-records.js';

// The `markMask` option and `COPROXY_MARK_MASK`: the nftables backend allocates its record
// bits from the mask. The option's form is checked on every backend (a typo fails at once,
// whichever backend is chosen), the variable only where it is read: backends/nftables.

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
  if (bitCount(value) > MAX_REDIRECTS) {
    throw new InvalidOptionsError(`may have at most ${MAX_REDIRECTS} bits (the hop bound), got ${hex(value)}`, option);
  }
  return value >>> 0;
}

const hex = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

function bitCount(mask: number): number {
  let count = 0;
  for (let bits = mask >>> 0; bits !== 0; bits >>>= 1) count += bits & 1;
  return count;
}
