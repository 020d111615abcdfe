import fs from 'node:fs';
import net from 'node:net';
import { dial } from '../../net/dial.js';
import {
  type CoproxyError,
  MarkMaskExhaustedError,
  NftCommandError,
  RecordsMismatchError,
  RedirectorIdInUseError,
  SyscallError,
  SysctlRequiredError,
  InvalidOptionsError,
  errnoCode,
} from '../../model/errors.js';
import type { RedirectRecords } from '../../model/redirect-records.js';
import type { Destination } from '../../model/match-rule.js';
import { type AcceptedFlow, type Backend, type FlowSink, type InstallSpec, type Installation, defineBackend, remoteEndpoint } from '../backend.js';
import { resolveMarkMask } from '../mark-mask.js';
import { closeFd, getMark, getOriginalDestination, openMarkedSocket } from './libc.js';
import { type BitHolder, bitsOf, candidateBits, recordsFromMark } from './marks.js';
import { listTables, removeTable } from './installed-tables.js';
import { nft } from './nft.js';
import { findSocketPid, isOwnerAlive, processStartTime } from './proc.js';
import { type UdpListener, listenUdp, renderUdpRules } from './udp.js';
import { type ListedTable, MIN_NFT_PRIORITY, type TableInfo, renderChain, renderClaim, tableName } from './tables.js';

/**
 * Linux: the kernel redirects unmodified programs. Each redirector is an nft table with a
 * nat `output` chain at its priority; its record is one socket-mark bit. A flow whose mark
 * has the bit passes the chain (`return`); any other flow the rule matches is redirected
 * to this listener. The accepted socket's mark (with `net.ipv4.tcp_fwmark_accept=1`) is the
 * incoming record; the onward socket is made through koffi with the incoming mark plus
 * this redirector's bit. Setting a mark needs CAP_NET_ADMIN, so an unprivileged program
 * cannot forge records to skip inspection.
 */
/** The registry's entry: nftables' own limits on the options, and its mark mask. */
export const nftables = defineBackend({
  name: 'nftables',
  specify(spec, options) {
    if (spec.priority < MIN_NFT_PRIORITY) {
      throw new InvalidOptionsError(
        `must be at least ${MIN_NFT_PRIORITY} on the nftables backend (nat chains run after conntrack), got ${spec.priority}`,
        'priority',
      );
    }
    if (!['127.0.0.1', '::1', 'localhost'].includes(spec.listen.host)) {
      throw new InvalidOptionsError(`the nftables backend listens on loopback only, got ${JSON.stringify(spec.listen.host)}`, 'listen.host');
    }
    // COPROXY_MARK_MASK concerns this backend only (the option's form is checked for all).
    return { ...spec, markMask: resolveMarkMask(options.markMask, process.env.COPROXY_MARK_MASK) };
  },
  open: () => nftablesBackend,
});

export const nftablesBackend: Backend = {
  name: 'nftables',
  install: (spec, sink) => install(spec, sink),
};

const FWMARK_ACCEPT = '/proc/sys/net/ipv4/tcp_fwmark_accept';
const CLAIM_ATTEMPTS = 16;

async function install(spec: InstallSpec, sink: FlowSink): Promise<Installation> {
  const tables = nft(); // throws BackendUnavailableError before anything is changed
  ensureFwmarkAccept();
  const { servers, port } = await listenOnLoopback(spec.listen.port);
  const families = new Set(servers.map((server) => server.family));
  if (!families.has(6) && spec.match.rule.family !== 4) {
    process.emitWarning(`coproxy: '${spec.id}' redirects IPv4 only: ::1 is not available in this network namespace`, 'CoproxyIpv6Warning');
  }
  let info: TableInfo;
  try {
    info = claimBit(spec);
  } catch (error) {
    for (const { server } of servers) server.close();
    throw error;
  }
  const name = tableName(spec.id);
  const view = new TableView();
  let udp: UdpListener | undefined;
  try {
    // UDP (match.udpPorts): its own loopback port and rules, in the same table (udp.ts).
    if (spec.udp !== undefined) {
      udp = await listenUdp({
        spec,
        limits: spec.udp,
        sink,
        info,
        records: (mark) => recordsFromMark(mark, spec.markMask, view.holdersFor(mark, spec.markMask)),
        onwardMark: (onward, incoming, mark) => onwardMark(onward.records, incoming, mark, info, view, spec.markMask),
        nft: (commands) => void tables.run(commands),
      });
    }
    const udpRules = udp === undefined ? '' : `\n${renderUdpRules(info, spec.match.rule, udp.port, udp.families)}`;
    tables.run(renderChain(info, spec.match.rule, port, families) + udpRules);
  } catch (error) {
    tables.run(`delete table inet ${name}`);
    for (const { server } of servers) server.close();
    udp?.close();
    throw error;
  }
  held.set(name, info.failMode);
  installTeardownHooks();

  let uninstalled = false;
  for (const { server, family } of servers) {
    server.on('connection', (socket: net.Socket) => {
      if (uninstalled) return void socket.destroy();
      let flow: AcceptedFlow;
      try {
        flow = acceptFlow(socket, family, spec, info, view, port);
      } catch (error) {
        const remote = remoteEndpoint(socket);
        socket.destroy();
        sink.rejected(error as CoproxyError, remote);
        return;
      }
      sink.accepted(flow);
    });
    server.on('error', (error) => sink.failed(error));
  }

  return {
    listening: { address: '127.0.0.1', port },
    uninstall() {
      if (uninstalled) return;
      uninstalled = true;
      removeHeld(name);
      for (const { server } of servers) server.close(); // established flows finish on their own
      udp?.close(); // UDP flows share the listening socket: they end with it
    },
  };
}

/** The kernel copies a SYN's mark to the accepted socket only with this sysctl on (per network namespace). */
function ensureFwmarkAccept(): void {
  let value: string;
  try {
    value = fs.readFileSync(FWMARK_ACCEPT, 'latin1').trim();
  } catch (error) {
    throw new SysctlRequiredError('net.ipv4.tcp_fwmark_accept', '1', 'unreadable', { cause: error });
  }
  if (value === '1') return;
  try {
    fs.writeFileSync(FWMARK_ACCEPT, '1');
  } catch (error) {
    throw new SysctlRequiredError('net.ipv4.tcp_fwmark_accept', '1', value, { cause: error });
  }
}

interface LoopbackServer {
  readonly server: net.Server;
  readonly family: 4 | 6;
}

/**
 * nat `redirect` sends a locally made connection to 127.0.0.1 or ::1 at the given port,
 * so the listener is one port on both loopbacks (IPv6 only where the namespace has ::1).
 */
async function listenOnLoopback(requested: number): Promise<{ servers: LoopbackServer[]; port: number }> {
  for (let attempt = 0; ; attempt++) {
    const v4 = await listen('127.0.0.1', requested);
    const port = (v4.address() as net.AddressInfo).port;
    try {
      const v6 = await listen('::1', port);
      return { servers: [{ server: v4, family: 4 }, { server: v6, family: 6 }], port };
    } catch (error) {
      const code = errnoCode(error);
      if (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT') return { servers: [{ server: v4, family: 4 }], port };
      v4.close();
      // An ephemeral port free on 127.0.0.1 may be taken on ::1: try another, a few times.
      if (code !== 'EADDRINUSE' || requested !== 0 || attempt >= 8) throw error;
    }
  }
}

function listen(host: string, port: number): Promise<net.Server> {
  // Half-open allowed: a client's FIN must reach the origin while the reply still flows.
  const server = net.createServer({ allowHalfOpen: true });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, ipv6Only: true }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * Takes a mark bit for this redirector, safely against redirectors starting at the same
 * moment, without a lock: the claim is an inert table (no chain yet) made with `create`;
 * once it exists, the older of two tables naming the same bit (the lower kernel handle)
 * keeps it and the younger withdraws and tries another bit. Every claimant sees every
 * older claim, because that one was committed first.
 */
function claimBit(spec: InstallSpec): TableInfo {
  const tables = nft();
  const name = tableName(spec.id);
  const start = processStartTime(process.pid) ?? 0;
  const lost = new Set<number>();
  for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
    const listed = listTables();
    const own = listed.find((table) => table.name === name);
    if (own !== undefined && isOwnerAlive(own.pid, own.start)) throw new RedirectorIdInUseError(spec.id, own.pid);
    sweepStale(listed, name);
    const taken = new Map<number, string>();
    for (const table of listed) if (table.name !== name && isHolding(table)) taken.set(table.bit, table.id);
    const bit = candidateBits(spec.id, spec.markMask, own?.bit).find((candidate) => !taken.has(candidate) && !lost.has(candidate));
    if (bit === undefined) throw new MarkMaskExhaustedError(spec.markMask, [...taken.values()]);
    const info: TableInfo = { id: spec.id, bit, priority: spec.priority, failMode: spec.failMode, pid: process.pid, start };
    // A stale table of this id (its process was killed) is replaced in the same
    // transaction, keeping its bit: a restarted vendor keeps the meaning of its records.
    const replace = own === undefined ? '' : `delete table inet ${name}\n`;
    try {
      tables.run(replace + renderClaim(info, spec.failMode === 'open'));
    } catch (error) {
      if (error instanceof NftCommandError && /File exists/.test(error.detail)) continue; // lost a race for the name
      throw error;
    }
    const after = listTables();
    const mine = after.find((table) => table.name === name);
    if (mine === undefined) continue; // removed under us (only root could): start over
    if (!after.some((table) => table.name !== name && table.bit === bit && table.handle < mine.handle)) return info;
    tables.run(`delete table inet ${name}`);
    lost.add(bit);
  }
  throw new NftCommandError(`create table inet ${name}`, `no bit claimed after ${CLAIM_ATTEMPTS} attempts`);
}

/** A table holds its bit while its owner runs, or, fail-closed, until an operator removes it. */
function isHolding(table: ListedTable): boolean {
  return table.failMode === 'closed' || isOwnerAlive(table.pid, table.start);
}

const warnedStale = new Set<string>();

/**
 * Stale tables (their process died without removing them) found at install time.
 * Fail-open tables are created with `flags owner`, so the kernel removes them when their
 * process dies; one left anyway (written without that flag) is removed here, as
 * `coproxy nft cleanup` does. A stale fail-closed table is left in place on purpose (it
 * blocks what it matches until its vendor restarts or an operator removes it) and
 * reported, once per table.
 */
function sweepStale(listed: readonly ListedTable[], except: string): void {
  for (const table of listed) {
    if (table.name === except || isOwnerAlive(table.pid, table.start)) continue;
    if (table.failMode === 'open') {
      removeTable(table.name);
    } else if (!warnedStale.has(table.name)) {
      warnedStale.add(table.name);
      process.emitWarning(
        `coproxy: stale fail-closed table '${table.name}' (process ${table.pid} is gone) blocks the traffic it matches; ` +
          `it stays until '${table.id}' restarts or 'coproxy nft cleanup --fail-closed' removes it`,
        'CoproxyStaleTableWarning',
      );
    }
  }
}

/**
 * The bit → redirector view used to turn marks into records, refreshed when a mark shows
 * a bit it does not know (at most once a second, as a foreign bit inside the mask would
 * otherwise cost a listing per connection).
 */
class TableView {
  private holders = new Map<number, BitHolder>();
  private refreshedAt = -Infinity;

  holdersFor(mark: number, mask: number): ReadonlyMap<number, BitHolder> {
    const unknown = bitsOf((mark & mask) >>> 0).some((bit) => !this.holders.has(bit));
    if (unknown && performance.now() - this.refreshedAt > 1000) {
      this.refreshedAt = performance.now();
      this.holders = new Map(listTables().map((table) => [table.bit, { id: table.id, priority: table.priority }]));
    }
    return this.holders;
  }

}

function acceptFlow(socket: net.Socket, family: 4 | 6, spec: InstallSpec, info: TableInfo, view: TableView, port: number): AcceptedFlow {
  const fd = socketFd(socket);
  const destination = getOriginalDestination(fd, family);
  const loopback = family === 6 ? '::1' : '127.0.0.1';
  if (destination.port === port && destination.address === loopback) {
    // Not redirected: a client dialled the listener itself. Forwarding it would loop here.
    throw new RecordsMismatchError(spec.id, []);
  }
  const mark = getMark(fd);
  const incoming = recordsFromMark(mark, spec.markMask, view.holdersFor(mark, spec.markMask));
  const records = incoming.withRedirect(spec.id);
  const sourceAddress = socket.remoteAddress ?? '';
  const sourcePort = socket.remotePort ?? 0;
  let pid: number | undefined | null = null;
  const source = {
    address: sourceAddress,
    port: sourcePort,
    /** Looked up in /proc on first read, not per connection: see proc.ts. */
    get pid(): number | undefined {
      if (pid === null) pid = findSocketPid({ address: sourceAddress, port: sourcePort }, destination);
      return pid;
    },
  };
  return {
    socket,
    originalDestination: destination,
    source,
    records,
    context: spec.context === undefined ? undefined : { owner: spec.id, bytes: spec.context },
    framingBytes: 0,
    connectOnward: (onward, { timeoutMs }) => connectMarked(destination, onwardMark(onward.records, incoming, mark, info, view, spec.markMask), timeoutMs),
  };
}

/**
 * The onward mark. With the flow's records (the normal case): the incoming mark, every
 * bit of it, including other programs' bits outside the mask, plus this redirector's bit.
 * With only this redirector's own record (`propagateRecords: false`): just its bit.
 */
function onwardMark(onward: RedirectRecords, incoming: RedirectRecords, mark: number, info: TableInfo, view: TableView, mask: number): number {
  const propagates = incoming.redirectedBy.every((id) => onward.redirectedBy.includes(id));
  if (propagates) return (mark | info.bit) >>> 0;
  let result = info.bit;
  const holders = view.holdersFor(mark, mask);
  for (const [bit, holder] of holders) if (onward.redirectedBy.includes(holder.id)) result |= bit;
  return result >>> 0;
}

function connectMarked(destination: Destination, mark: number, timeoutMs: number): Promise<net.Socket> {
  return dial({ host: destination.address, port: destination.port, allowHalfOpen: true, timeoutMs }, undefined, (options) => {
    const fd = openMarkedSocket(destination.family, mark);
    let socket: net.Socket;
    try {
      // manualStart: reading starts once connected, not on a socket that is not yet.
      socket = new net.Socket({ fd, allowHalfOpen: true, manualStart: true } as net.SocketConstructorOpts);
    } catch (error) {
      closeFd(fd);
      throw error;
    }
    return socket.connect(options);
  });
}

/** The descriptor under a Node socket (libuv's, on Linux always present once accepted). */
function socketFd(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new SyscallError('uv_fileno', 9, 'EBADF');
  return fd;
}

/** Tables this process installed, by name, with their fail mode, for teardown at exit. */
const held = new Map<string, 'open' | 'closed'>();
let hooksInstalled = false;

function removeHeld(name: string): void {
  if (!held.delete(name)) return;
  removeTable(name);
}

/**
 * Teardown outside `close()`: at exit, tables this process holds are removed, except a
 * fail-closed one when the process is crashing (a non-zero exit): that one keeps blocking,
 * which is what fail-closed means. On SIGINT or SIGTERM, when the program has no handler
 * of its own, the tables are removed and the signal then takes its default course; a
 * program that handles the signal decides itself, and `close()` removes them.
 */
function installTeardownHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.once('exit', (code) => {
    for (const [name, failMode] of held) {
      if (code !== 0 && failMode === 'closed') continue;
      try {
        removeTable(name);
      } catch (error) {
        // Warnings are asynchronous and would be lost at exit: say it now.
        process.stderr.write(`coproxy: could not remove nft table ${name} at exit: ${(error as Error).message}\n`);
      }
    }
    held.clear();
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      if (process.listenerCount(signal) > 1) return; // the program handles it
      for (const name of [...held.keys()]) removeHeld(name);
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    };
    // First in line, so the program's own handlers are still counted when it runs, even
    // a `once` handler, which Node removes before calling it.
    process.prependListener(signal, onSignal);
  }
}
