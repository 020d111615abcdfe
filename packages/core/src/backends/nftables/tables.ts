import net from 'node:net';
import type { MatchRule, PortSpec, Transport } from '../../model/match-rule.js';
import type { FailMode } from '../../model/flow.js';

/**
 * The nft side of a redirector, as text: what is installed and how it is read back.
 * Pure functions, so the rules are tested without privileges.
 *
 * Each redirector is one table of family `inet` named `coproxy-<id>`, whose comment
 * records what other redirectors and operators need to know:
 *
 * ```
 * table inet coproxy-acme-web {
 *   flags owner                      # fail-open only: the kernel removes it when the process dies
 *   comment "coproxy v1 id=acme-web bit=0x01000000 prio=100 fail=open pid=4242 start=9131"
 *   chain output {
 *     type nat hook output priority 100; policy accept;
 *     meta mark & 0x01000000 != 0 return
 *     meta nfproto ipv4 meta l4proto tcp tcp dport { 80, 8080 } redirect to :40123
 *     meta nfproto ipv6 meta l4proto tcp tcp dport { 80, 8080 } redirect to :40123
 *   }
 * }
 * ```
 */
export const TABLE_PREFIX = 'coproxy-';

/** nat chains must run after conntrack (-200): the kernel refuses lower priorities. */
export const MIN_NFT_PRIORITY = -199;

export interface TableInfo {
  readonly id: string;
  /** The socket-mark bit this redirector's records use. */
  readonly bit: number;
  readonly priority: number;
  readonly failMode: FailMode;
  readonly pid: number;
  /** The owner's start time (field 22 of /proc/<pid>/stat), so a reused pid is not mistaken for it. */
  readonly start: number;
}

export interface ListedTable extends TableInfo {
  readonly name: string;
  /** The kernel's handle, increasing in creation order: the older claim wins a bit. */
  readonly handle: number;
  /** Whether the table has its output chain (false while it is only a claim on a bit). */
  readonly active: boolean;
}

export const tableName = (id: string): string => `${TABLE_PREFIX}${id}`;

export const hex32 = (value: number): string => `0x${(value >>> 0).toString(16).padStart(8, '0')}`;

export function renderComment(info: TableInfo): string {
  return `coproxy v1 id=${info.id} bit=${hex32(info.bit)} prio=${info.priority} fail=${info.failMode} pid=${info.pid} start=${info.start}`;
}

const COMMENT = /^coproxy v1 id=([a-z0-9-]{1,32}) bit=0x([0-9a-f]{8}) prio=(-?\d{1,10}) fail=(open|closed) pid=(\d{1,10}) start=(\d{1,20})$/;

export function parseComment(comment: string): TableInfo | undefined {
  const m = COMMENT.exec(comment);
  if (m === null) return undefined;
  const [, id = '', bit = '', priority = '', failMode = '', pid = '', start = ''] = m;
  const bitValue = Number.parseInt(bit, 16);
  // One bit, exactly: anything else is not a table this version wrote.
  if (bitValue === 0 || (bitValue & (bitValue - 1)) !== 0) return undefined;
  return { id, bit: bitValue >>> 0, priority: Number(priority), failMode: failMode as FailMode, pid: Number(pid), start: Number(start) };
}

/**
 * The claim: an empty table, inert (no chain), created with `create` so that it fails if
 * the name exists. `flags owner` ties a fail-open table to this process's netlink socket.
 */
export function renderClaim(info: TableInfo, owner: boolean): string {
  return `create table inet ${tableName(info.id)} { ${owner ? 'flags owner; ' : ''}comment "${renderComment(info)}"; }`;
}

/** The chain that makes the claim live: skip flows carrying this bit, redirect the rest that match. */
export function renderChain(info: TableInfo, match: MatchRule, port: number, families: ReadonlySet<4 | 6>): string {
  const table = `inet ${tableName(info.id)}`;
  const lines = [
    `add chain ${table} output { type nat hook output priority ${info.priority}; policy accept; }`,
    `add rule ${table} output meta mark & ${hex32(info.bit)} != 0 return`,
  ];
  for (const family of [4, 6] as const) {
    const selector = matchSelector(match, family);
    if (selector !== undefined && families.has(family)) lines.push(`add rule ${table} output ${selector} redirect to :${port}`);
  }
  return lines.join('\n');
}

/** The nft expression selecting what `match` selects in one family, or undefined if nothing. */
export function matchSelector(match: MatchRule, family: 4 | 6, transport: Transport = 'tcp'): string | undefined {
  if (match.family !== undefined && match.family !== family) return undefined;
  // A rule naming UDP ports takes TCP only on the ports it names (MatchRule.ports).
  if (transport === 'tcp' && match.udpPorts !== undefined && match.ports === undefined) return undefined;
  if (transport === 'udp' && match.udpPorts === undefined) return undefined;
  const parts = [`meta nfproto ${family === 4 ? 'ipv4' : 'ipv6'}`];
  if (match.hosts !== undefined) {
    const hosts = match.hosts.filter((host) => net.isIP(host.split('/')[0] ?? '') === family);
    if (hosts.length === 0) return undefined;
    parts.push(`${family === 4 ? 'ip' : 'ip6'} daddr { ${hosts.join(', ')} }`);
  }
  const ports = transport === 'udp' ? match.udpPorts : match.ports;
  parts.push(`meta l4proto ${transport}`);
  if (ports !== undefined) parts.push(`${transport} dport { ${ports.map(renderPort).join(', ')} }`);
  return parts.join(' ');
}

const renderPort = (spec: PortSpec): string => (typeof spec === 'number' ? String(spec) : `${spec[0]}-${spec[1]}`);

/** Names of coproxy tables in `nft list tables` output. */
export function parseTableNames(listing: string): string[] {
  const names: string[] = [];
  for (const line of listing.split('\n')) {
    const m = /^table inet (coproxy-[a-z0-9-]{1,32})$/.exec(line.trim());
    if (m?.[1] !== undefined) names.push(m[1]);
  }
  return names;
}

/** One table from `nft -a list table inet <name>`; undefined if it is not one coproxy wrote. */
export function parseTable(listing: string): ListedTable | undefined {
  const header = /^table inet (\S+) \{ # handle (\d+)/m.exec(listing);
  const comment = /^\s*comment "([^"]*)"$/m.exec(listing);
  if (header?.[1] === undefined || header[2] === undefined || comment?.[1] === undefined) return undefined;
  const info = parseComment(comment[1]);
  if (info === undefined || tableName(info.id) !== header[1]) return undefined;
  return { ...info, name: header[1], handle: Number(header[2]), active: /^\s*chain output \{/m.test(listing) };
}
