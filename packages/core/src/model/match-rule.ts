import net from 'node:net';
import { InvalidOptionsError } from './errors.js';

/** A port, or an inclusive range `[from, to]`. */
export type PortSpec = number | readonly [from: number, to: number];

/**
 * Which outbound TCP connections a redirector takes. Every field narrows; an absent field
 * matches everything. Addresses are matched after name resolution, as the kernel sees
 * them, so the same rule means the same thing on every backend.
 *
 * @example
 * ```ts
 * { ports: [80, [8000, 8099]], hosts: ['203.0.113.0/24', '::1'], family: 4 }
 * ```
 */
export interface MatchRule {
  /**
   * TCP destination ports. Absent: every TCP port, unless the rule names `udpPorts`, in
   * which case absent means no TCP at all (`{ udpPorts: [443] }` takes UDP/443 only).
   */
  readonly ports?: readonly PortSpec[];
  /**
   * UDP destination ports: datagram flows to these are redirected too. Absent: no UDP (a
   * rule without it means what it always meant, TCP only).
   */
  readonly udpPorts?: readonly PortSpec[];
  /** IP addresses or CIDR blocks (`192.0.2.0/24`, `2001:db8::/32`, `127.0.0.1`). */
  readonly hosts?: readonly string[];
  readonly family?: 4 | 6;
}

export interface Destination {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/** The transports a rule can name. */
export type Transport = 'tcp' | 'udp';

/** A validated rule, compiled for the per-connection check. */
export interface CompiledMatch {
  readonly rule: MatchRule;
  /** Whether the rule takes a flow to `destination` over `transport` (default `'tcp'`). */
  matches(destination: Destination, transport?: Transport): boolean;
}

function assertPort(value: unknown, option: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
    throw new InvalidOptionsError(`ports are integers in 1..65535, got ${JSON.stringify(value)}`, option);
  }
}

/** Validates a rule (it may come from JSON) and compiles it; throws `InvalidOptionsError`. */
export function compileMatch(rule: MatchRule = {}, option = 'match'): CompiledMatch {
  if (typeof rule !== 'object' || rule === null) throw new InvalidOptionsError('must be an object', option);
  for (const list of ['ports', 'udpPorts', 'hosts'] as const) {
    const value = rule[list];
    if (value !== undefined && (!Array.isArray(value) || value.length === 0)) {
      // An empty list would read as "nothing" to some and "anything" to others: refuse it.
      throw new InvalidOptionsError('must be a non-empty array, or absent to match every value', `${option}.${list}`);
    }
  }
  const ranges = compilePorts(rule.ports, `${option}.ports`);
  const udpRanges = compilePorts(rule.udpPorts, `${option}.udpPorts`);
  // A rule naming UDP ports takes TCP only on the ports it names (see MatchRule.ports).
  const takesTcp = rule.udpPorts === undefined || rule.ports !== undefined;
  if (rule.family !== undefined && rule.family !== 4 && rule.family !== 6) {
    throw new InvalidOptionsError(`must be 4 or 6, got ${JSON.stringify(rule.family)}`, `${option}.family`);
  }
  let hosts: net.BlockList | undefined;
  if (rule.hosts !== undefined) {
    hosts = new net.BlockList();
    for (const [i, host] of rule.hosts.entries()) addHost(hosts, host, `${option}.hosts[${i}]`);
  }
  const family = rule.family;
  // A copy, frozen: the caller's object may change later, the installed rule must not.
  const frozen: MatchRule = Object.freeze({
    ...(rule.ports !== undefined && { ports: Object.freeze(rule.ports.map((p) => (Array.isArray(p) ? Object.freeze([...p]) : p))) as readonly PortSpec[] }),
    ...(rule.udpPorts !== undefined && { udpPorts: Object.freeze(rule.udpPorts.map((p) => (Array.isArray(p) ? Object.freeze([...p]) : p))) as readonly PortSpec[] }),
    ...(rule.hosts !== undefined && { hosts: Object.freeze([...rule.hosts]) }),
    ...(family !== undefined && { family }),
  });
  return {
    rule: frozen,
    matches(destination, transport = 'tcp') {
      if (family !== undefined && destination.family !== family) return false;
      if (transport === 'udp') {
        if (!udpRanges.some(([from, to]) => destination.port >= from && destination.port <= to)) return false;
      } else if (!takesTcp) {
        return false;
      } else if (ranges.length > 0 && !ranges.some(([from, to]) => destination.port >= from && destination.port <= to)) {
        return false;
      }
      if (hosts !== undefined && !hosts.check(destination.address, destination.family === 6 ? 'ipv6' : 'ipv4')) {
        return false;
      }
      return true;
    },
  };
}

/**
 * Whether a redirector may take a flow to `destination`: its rule matches it, read as the
 * same endpoint whichever way the redirect layer spelt it. A PROXY header decodes an
 * IPv4-mapped destination (`::ffff:192.0.2.1`) to plain IPv4, so a rule that matched the
 * mapped form on the app's side (`family: 6`) is asked about that form too. Address
 * lists already treat the two spellings alike (`net.BlockList`).
 */
export function admits(match: CompiledMatch, destination: Destination, transport: Transport = 'tcp'): boolean {
  if (match.matches(destination, transport)) return true;
  return destination.family === 4 && match.matches({ address: `::ffff:${destination.address}`, port: destination.port, family: 6 }, transport);
}

function compilePorts(list: readonly PortSpec[] | undefined, option: string): [number, number][] {
  const ranges: [number, number][] = [];
  for (const [i, spec] of (list ?? []).entries()) {
    if (Array.isArray(spec)) {
      if (spec.length !== 2) throw new InvalidOptionsError('a range is [from, to]', `${option}[${i}]`);
      const [from, to] = spec as readonly unknown[];
      assertPort(from, `${option}[${i}][0]`);
      assertPort(to, `${option}[${i}][1]`);
      if (from > to) throw new InvalidOptionsError(`range ${from}-${to} is empty`, `${option}[${i}]`);
      ranges.push([from, to]);
    } else {
      assertPort(spec, `${option}[${i}]`);
      ranges.push([spec, spec]);
    }
  }
  return ranges;
}

function addHost(list: net.BlockList, host: unknown, option: string): void {
  if (typeof host !== 'string') throw new InvalidOptionsError('must be an address or CIDR string', option);
  const [address = '', prefixText, ...extra] = host.split('/');
  const family = net.isIP(address);
  if (family === 0 || extra.length > 0) {
    throw new InvalidOptionsError(`'${host}' is not an IP address or CIDR block (names are not matched)`, option);
  }
  const type = family === 6 ? 'ipv6' : 'ipv4';
  if (prefixText === undefined) {
    list.addAddress(address, type);
    return;
  }
  const prefix = Number(prefixText);
  const max = family === 6 ? 128 : 32;
  if (!/^\d{1,3}$/.test(prefixText) || prefix > max) {
    throw new InvalidOptionsError(`prefix length of '${host}' must be 0..${max}`, option);
  }
  list.addSubnet(address, prefix, type);
}
