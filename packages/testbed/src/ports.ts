/**
 * Where a run's origin listens. A flow's port is its tag, so a run needs one free port per
 * flow, at once. They are taken outside the kernel's ephemeral range: connect() picks the
 * local ports of outgoing connections (the client's, the vendors' onward ones) from that
 * range, and a port held there by a live or TIME_WAIT connection cannot be bound to listen
 * (`EADDRINUSE` on a machine with heavy loopback traffic). A port that still cannot be bound
 * (another program listens there; `EACCES`) is replaced by the origin, not fatal.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { prng } from './flows.js';

export interface PortRange {
  readonly from: number;
  readonly to: number;
}

/** Ports below this are privileged or well known: never chosen. */
export const LOWEST_PORT = 1024;
const HIGHEST_PORT = 65_535;

/**
 * Where the ephemeral range comes from when the platform does not say: IANA's dynamic range
 * (RFC 6335), which Windows, macOS and the BSDs use by default.
 */
export const FALLBACK_EPHEMERAL: PortRange = { from: 49_152, to: 65_535 };

/** Parses `ip_local_port_range` ("32768\t60999"). */
export function parsePortRange(text: string): PortRange | undefined {
  const m = /^\s*(\d+)\s+(\d+)\s*$/.exec(text);
  if (m === null) return undefined;
  const from = Number(m[1]);
  const to = Number(m[2]);
  return from >= 1 && from <= to && to <= HIGHEST_PORT ? { from, to } : undefined;
}

/**
 * The ephemeral range: Linux's `net.ipv4.ip_local_port_range` (in `netns`, when given: each
 * network namespace has its own), else the fallback.
 */
export function ephemeralRange(netns?: string): { range: PortRange; source: string } {
  try {
    const text =
      netns === undefined
        ? fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'latin1')
        : execFileSync('ip', ['netns', 'exec', netns, 'cat', '/proc/sys/net/ipv4/ip_local_port_range'], { encoding: 'latin1' });
    const range = parsePortRange(text);
    if (range !== undefined) return { range, source: 'net.ipv4.ip_local_port_range' };
  } catch (error) {
    if (!isMissing(error)) throw error;
  }
  return { range: FALLBACK_EPHEMERAL, source: 'IANA dynamic range (no ip_local_port_range here)' };
}

function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  // ENOENT: no /proc (macOS, Windows); a failed `ip netns exec` is a status, not a code.
  return code === 'ENOENT' || code === 'EACCES' || typeof (error as { status?: unknown }).status === 'number';
}

/** The usable ports outside `ephemeral`, as ranges, lowest first. */
export function portsOutside(ephemeral: PortRange): PortRange[] {
  const ranges: PortRange[] = [];
  if (ephemeral.from > LOWEST_PORT) ranges.push({ from: LOWEST_PORT, to: ephemeral.from - 1 });
  if (ephemeral.to < HIGHEST_PORT) ranges.push({ from: Math.max(LOWEST_PORT, ephemeral.to + 1), to: HIGHEST_PORT });
  return ranges.filter((r) => r.from <= r.to);
}

const size = (range: PortRange): number => range.to - range.from + 1;

/**
 * `count` ports from `ranges`: one block, starting at `base` when given, else at a seeded
 * place in a range with room; when no range has room, the ranges in turn.
 */
export function choosePorts(count: number, ranges: readonly PortRange[], seed: number, base?: number): number[] {
  const total = ranges.reduce((sum, r) => sum + size(r), 0);
  if (count > total) throw new RangeError(`${count} ports wanted, ${total} outside the ephemeral range`);
  if (base !== undefined) {
    const start = ranges.find((r) => base >= r.from && base <= r.to);
    if (start === undefined) throw new RangeError(`port ${base} is not outside the ephemeral range (${ranges.map((r) => `${r.from}-${r.to}`).join(', ')})`);
    return take(count, ranges, base);
  }
  const roomy = ranges.filter((r) => size(r) >= count);
  if (roomy.length === 0) return take(count, ranges, ranges[0]!.from);
  const random = prng(seed ^ 0x9e3779b9);
  const range = roomy[Math.floor(random() * roomy.length)]!;
  return take(count, ranges, range.from + Math.floor(random() * (size(range) - count + 1)));
}

/** `count` ports from `start` upwards through `ranges`, wrapping to the first range. */
function take(count: number, ranges: readonly PortRange[], start: number): number[] {
  const ports: number[] = [];
  let index = ranges.findIndex((r) => start >= r.from && start <= r.to);
  let port = start;
  while (ports.length < count) {
    ports.push(port);
    if (port < ranges[index]!.to) port++;
    else {
      index = (index + 1) % ranges.length;
      port = ranges[index]!.from;
    }
  }
  return ports;
}

/** The next port after `from` in `ranges` (wrapping) that `taken` does not hold, for a replacement. */
export function nextFreePort(ranges: readonly PortRange[], taken: ReadonlySet<number>, from: number): number | undefined {
  const all = ranges.reduce((sum, r) => sum + size(r), 0);
  let index = Math.max(0, ranges.findIndex((r) => from >= r.from && from <= r.to));
  let port = from;
  for (let i = 0; i < all; i++) {
    if (port < ranges[index]!.to && port >= ranges[index]!.from) port++;
    else {
      index = (index + 1) % ranges.length;
      port = ranges[index]!.from;
    }
    if (!taken.has(port)) return port;
  }
  return undefined;
}

/** Ports as a vendor's `--ports` list: ranges where they are consecutive ("20000-20999,31002"). */
export function portList(ports: readonly number[]): string {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}
