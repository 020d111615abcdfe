import dgram from 'node:dgram';
import { type CoproxyError, DatagramFlowLimitError, RecordsMismatchError, SyscallError, errnoCode } from '../../model/errors.js';
import type { MatchRule } from '../../model/match-rule.js';
import type { RedirectRecords } from '../../model/redirect-records.js';
import { type DatagramFlowEndpoint, DatagramFlowTable, type DatagramPeer } from '../../net/datagram-flows.js';
import { openOnwardDatagram } from '../../net/onward-datagram.js';
import type { DatagramLimits, FlowSink, InstallSpec, OnwardRecords } from '../backend.js';
import { udpPeerUid } from '../../net/peer-uid.js';
import { type ConntrackEntry, lookupUdpFlow } from './conntrack.js';
import { openMarkedSocket } from './libc.js';
import { type TableInfo, matchSelector, tableName } from './tables.js';

/**
 * UDP on the nftables backend. A locally made UDP datagram has no accepted socket to ask
 * `SO_ORIGINAL_DST` of, so the redirect is nat `redirect` as for TCP (in the same output
 * chain, after the same `meta mark & BIT != 0 return`), and what it changed is read back
 * from conntrack (conntrack.ts):
 *
 * - the original destination, from the flow's conntrack entry, looked up by its reply
 *   tuple (listener → client, what the listener's socket sees);
 * - the records: the redirect rule copies the client's socket mark to the entry's
 *   connection mark (`ct mark set meta mark`), as `tcp_fwmark_accept` gives TCP's
 *   accepted socket the SYN's mark;
 * - replies need nothing: the vendor sends from the listener to the client's address, and
 *   conntrack rewrites the source back to the original destination, as for TCP.
 *
 * TPROXY was the other way (a policy route for marked local traffic, IP_TRANSPARENT, the
 * destination from IP_RECVORIGDSTADDR): Node's dgram can neither set IP_TRANSPARENT before
 * bind nor read ancillary data, so it would need every socket and recvmsg through koffi,
 * outside libuv's event loop, plus a reply socket bound to each original address, and a
 * route and rule that outlive the process if it is killed. `redirect` needs none of that.
 *
 * Conntrack and the flow table must agree on what a client address and port stands for.
 * Conntrack forgets an idle UDP entry after `nf_conntrack_udp_timeout` (30 s by default,
 * often less on busy hosts), possibly before this listener's flow idles out; the same
 * socket's next datagram then makes a new entry, maybe to another destination, with the
 * same reply tuple, so it arrives here from the same client address and port. Pushed into
 * the old flow it would go to the old destination, and that destination's answer would
 * reach the client as the new one's. So a datagram after a silence of
 * {@link RECHECK_AFTER_IDLE_MS} asks conntrack again (one lookup per silence, not per
 * datagram): another destination or mark ends the old flow (`superseded`) and begins a new
 * one, judged from this datagram. Not covered: conntrack timeouts under that silence, or an
 * entry flushed by an administrator and remade within it.
 *
 * A rejected flow's client address and port go into a set of this table with a timeout;
 * an input-hook rule answers the client's next datagram of that flow with ICMP port
 * unreachable (conntrack translates it to come from the original destination), which a
 * connected UDP socket reports as ECONNREFUSED.
 */

const REJECT_SECONDS = 120; // as long as conntrack keeps a UDP flow that has seen replies

/** A flow silent this long may have lost its conntrack entry: its next datagram asks again (conntrack counts in whole seconds). */
export const RECHECK_AFTER_IDLE_MS = 500;

/** The rules a UDP-matching redirector adds to its table, after its output chain exists. */
export function renderUdpRules(info: TableInfo, match: MatchRule, port: number, families: ReadonlySet<4 | 6>): string {
  const table = `inet ${tableName(info.id)}`;
  const lines: string[] = [
    `add set ${table} rejected4 { type ipv4_addr . inet_service; flags timeout; }`,
    `add set ${table} rejected6 { type ipv6_addr . inet_service; flags timeout; }`,
    `add chain ${table} input { type filter hook input priority 0; policy accept; }`,
  ];
  for (const family of [4, 6] as const) {
    const selector = matchSelector(match, family, 'udp');
    if (selector === undefined || !families.has(family)) continue;
    lines.push(`add rule ${table} output ${selector} ct mark set meta mark redirect to :${port}`);
    const ip = family === 4 ? 'ip' : 'ip6';
    lines.push(`add rule ${table} input meta l4proto udp ${ip} saddr . udp sport @rejected${family} udp dport ${port} reject`);
  }
  return lines.join('\n');
}

/** The nft command that makes the client's next datagram of a flow answered with ICMP port unreachable. */
export function renderReject(info: TableInfo, client: DatagramPeer): string {
  return `add element inet ${tableName(info.id)} rejected${client.family} { ${client.address} . ${client.port} timeout ${REJECT_SECONDS}s }`;
}

export interface UdpListenerOptions {
  readonly spec: InstallSpec;
  readonly limits: DatagramLimits;
  readonly sink: FlowSink;
  readonly info: TableInfo;
  /** The records a connection mark stands for (without this redirect). */
  records(mark: number): RedirectRecords;
  /** The onward socket's mark for a flow that came with `mark`. */
  onwardMark(onward: OnwardRecords, incoming: RedirectRecords, mark: number): number;
  /** Runs nft commands (the backend's shared context). */
  nft(commands: string): void;
}

export interface UdpListener {
  readonly port: number;
  readonly families: ReadonlySet<4 | 6>;
  close(): void;
}

/** One UDP port on 127.0.0.1 and ::1 (where the namespace has it), each socket with its flow table. */
export async function listenUdp(options: UdpListenerOptions): Promise<UdpListener> {
  const sockets = await bindLoopback();
  const port = sockets[0]!.port;
  const tables = sockets.map(({ socket, family }) => {
    const listener = { address: family === 6 ? '::1' : '127.0.0.1', port, family };
    // The "header" of a datagram is its flow's conntrack entry: asked for a new client
    // address and port (before the table counts it, so a datagram sent to the listener
    // itself is refused without taking a place or evicting anyone), and again after a
    // silence (a lookup that fails then drops this datagram; the flow stays as it was).
    const table: DatagramFlowTable<ConntrackEntry | undefined> = new DatagramFlowTable(socket, {
      ...options.limits,
      unwrap: (datagram, peer, flow, known) => {
        if (flow === undefined) return { payload: datagram, header: redirected(lookupUdpFlow(listener, peer), listener, options.spec.id) };
        if (known === undefined || flow.idleMs < RECHECK_AFTER_IDLE_MS) return { payload: datagram, header: known };
        const now = lookupUdpFlow(listener, peer);
        if (now !== undefined && sameEntry(known, now)) return { payload: datagram, header: known };
        // Another flow now: the old one ends, and the new one is opened (and refused by
        // `opened` if it is no redirected flow) from this datagram.
        return { payload: datagram, header: now !== undefined && isRedirected(now, listener) ? now : undefined, newFlow: true };
      },
      // The sending socket's owner, for a full table's fair share (an unconnected or
      // already closed socket, or no original source: one owner, undefined).
      owner: (_peer, entry) => (entry?.originalSource === undefined ? undefined : udpPeerUid(entry.originalSource, entry.originalDestination)),
      opened: (endpoint, entry) => {
        if (entry === undefined) throw new RecordsMismatchError(options.spec.id, []);
        openFlow(endpoint, entry, options);
      },
      refused: (peer, reason) => {
        const error: CoproxyError =
          reason.kind === 'full'
            ? new DatagramFlowLimitError(options.spec.id, options.limits.maxFlows)
            : reason.error instanceof Error && 'code' in reason.error && typeof reason.error.code === 'string' && reason.error.code.startsWith('COPROXY_')
              ? (reason.error as CoproxyError)
              : new SyscallError('udp flow', 0, String(reason.error));
        options.sink.rejected(error, { address: peer.address, port: peer.port });
      },
    });
    socket.on('error', (error) => options.sink.failed(error));
    return table;
  });
  return {
    port,
    families: new Set(sockets.map(({ family }) => family)),
    close() {
      for (const table of tables) table.close();
      for (const { socket } of sockets) socket.close();
    },
  };
}

function sameEntry(a: ConntrackEntry, b: ConntrackEntry): boolean {
  const [x, y] = [a.originalDestination, b.originalDestination];
  return a.mark === b.mark && x.address === y.address && x.port === y.port && x.family === y.family;
}

/** Sent to the listener itself, not redirected (conntrack tracks that flow too, with the listener as its original destination): forwarding it would loop. */
function isRedirected(entry: ConntrackEntry, listener: DatagramPeer): boolean {
  const original = entry.originalDestination;
  return !(original.address === listener.address && original.port === listener.port);
}

/** The entry of a new client's flow, or `COPROXY_RECORDS_MISMATCH` if there is none or it names the listener. */
function redirected(entry: ConntrackEntry | undefined, listener: DatagramPeer, id: string): ConntrackEntry {
  if (entry === undefined || !isRedirected(entry, listener)) throw new RecordsMismatchError(id, []);
  return entry;
}

/** Hands the flow, judged by its conntrack entry, to the sink. */
function openFlow(endpoint: DatagramFlowEndpoint, entry: ConntrackEntry, options: UdpListenerOptions): void {
  const { spec, info } = options;
  const client = endpoint.peer;
  const { mark } = entry;
  const incoming = options.records(mark);
  options.sink.acceptedDatagram?.({
    endpoint,
    originalDestination: entry.originalDestination,
    source: { address: client.address, port: client.port },
    records: incoming.withRedirect(spec.id),
    context: spec.context === undefined ? undefined : { owner: spec.id, bytes: spec.context },
    reject: () => options.nft(renderReject(info, client)),
    connectOnward: (onward) =>
      openOnwardDatagram({
        destination: entry.originalDestination,
        open: () => openMarkedSocket(entry.originalDestination.family, options.onwardMark(onward, incoming, mark), 'udp'),
      }),
  });
}

interface BoundSocket {
  readonly socket: dgram.Socket;
  readonly family: 4 | 6;
  readonly port: number;
}

async function bindLoopback(): Promise<BoundSocket[]> {
  for (let attempt = 0; ; attempt++) {
    const v4 = await bind('udp4', '127.0.0.1', 0);
    const port = v4.address().port;
    try {
      const v6 = await bind('udp6', '::1', port);
      return [{ socket: v4, family: 4, port }, { socket: v6, family: 6, port }];
    } catch (error) {
      const code = errnoCode(error);
      if (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT') return [{ socket: v4, family: 4, port }];
      v4.close();
      // A port free on 127.0.0.1 may be taken on ::1: try another, a few times.
      if (code !== 'EADDRINUSE' || attempt >= 8) throw error;
    }
  }
}

function bind(type: 'udp4' | 'udp6', address: string, port: number): Promise<dgram.Socket> {
  const socket = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
  return new Promise((resolve, reject) => {
    socket.once('error', (error) => {
      socket.close();
      reject(error);
    });
    socket.bind({ address, port }, () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}
