import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BackendName } from '@coproxy/core';
import { LogFollower } from './event-log.js';
import { type FlowShape, type FlowSpec, planFlows, prng } from './flows.js';
import { choosePorts, ephemeralRange, portList, portsOutside } from './ports.js';
import type { ClientFlowReport, ClientMessage, OriginFlowReport, OriginMessage, PortReplacement } from './protocol.js';

/** Any backend core's registry knows; the testbed's vendors run on Linux, so in practice embedded or nftables. */
export type Backend = BackendName;
/** The built-in vendors (the two reference vendors' CLIs), or any command starting a vendor built on core. */
export type VendorKind = 'tls' | 'http' | 'command';
export type FailMode = 'open' | 'closed';

/** A vendor to start. Unset fields get defaults (see assignVendors). */
export interface VendorSpec {
  readonly kind: VendorKind;
  /** kind 'command': a shell command; its environment and placeholders are in the README ("Any vendor"). */
  readonly command?: string;
  readonly id?: string;
  readonly priority?: number;
  /** Default 'open'. */
  readonly failMode?: FailMode;
  /** Built-in vendors only: their onward connections carry no records (`--drop-records`). */
  readonly dropsRecords?: boolean;
}

export interface ScenarioOptions {
  readonly backend: Backend;
  /** Vendors in start order; the same kind may appear several times. */
  readonly vendors: readonly (VendorSpec | 'tls' | 'http')[];
  readonly flows: number;
  readonly concurrency: number;
  /** A vendor id (or kind: its first vendor) whose onward connections drop records. */
  readonly dropRecords?: string | undefined;
  readonly seed: number;
  /** Called as flows complete. */
  readonly onProgress?: (done: number, total: number) => void;
  /** Give up on one flow after this long. Default 15 000 ms. */
  readonly flowTimeoutMs?: number;
  /** The origin's first port; default a seeded place outside the ephemeral range. */
  readonly originPortBase?: number | undefined;
  /** What the flows look like (kinds, sizes, half-close, a slow reader); default the mixed run. */
  readonly shape?: FlowShape | undefined;
  /**
   * A vendor id: the flows run in three phases, and this vendor is killed (SIGKILL) after
   * the first and started again after the second. Its fail mode says what the second
   * phase's flows must do: go on through the others (open) or fail (closed).
   */
  readonly restart?: string | undefined;
}

/** The most flows a run takes: see the README ("Limits") for what bounds it. */
export const MAX_FLOWS = 10_000;

export interface VendorInfo {
  readonly id: string;
  readonly kind: VendorKind;
  readonly priority: number;
  readonly dropsRecords: boolean;
  readonly failMode: FailMode;
  readonly command?: string | undefined;
}

/** What one vendor's event log said about one connection (or UDP flow) it accepted. */
export interface Acceptance {
  readonly vendor: string;
  readonly port: number;
  readonly transport: 'tcp' | 'udp';
  readonly state: string;
  readonly redirectedBy: readonly string[];
  /** The vendor's connection id (its `closed` line carries the same). */
  readonly connectionId: string;
  /** UDP flows: the datagrams each way, from the vendor's `closed` line; absent until it came. */
  readonly datagrams?: { readonly fromClient: number; readonly toClient: number } | undefined;
}

/** Phases of a run with a restart: before the kill, while the vendor is down, after its restart. */
export type Phase = 'before-restart' | 'vendor-down' | 'restarted';

export interface FlowResult {
  readonly index: number;
  readonly kind: FlowSpec['kind'];
  readonly port: number;
  readonly viaCurl: boolean;
  readonly phase?: Phase | undefined;
  /** The vendors that had to accept it, in order; empty when it had to fail (a fail-closed vendor was down). */
  readonly expected: readonly string[];
  /** Acceptances in the order the flow took (by the depth of the records each vendor saw). */
  readonly hops: readonly Acceptance[];
  readonly client: ClientFlowReport | undefined;
  readonly origin: OriginFlowReport | undefined;
  /** Invariants this flow broke; empty when it is as it must be. */
  readonly problems: readonly string[];
  /** The same vendor accepted this flow more than once. */
  readonly looped: boolean;
}

export interface Report {
  readonly backend: Backend;
  readonly seed: number;
  readonly startedAt: string;
  readonly durationMs: number;
  readonly vendors: readonly VendorInfo[];
  readonly flows: readonly FlowResult[];
  readonly loopDetected: boolean;
  /** The loop was cut by stopping the vendors (their flows then fail). */
  readonly loopStopped: boolean;
  readonly invariantsHold: boolean;
  /** Processes a vendor started that still ran once every vendor had been stopped (killed then). */
  readonly leftBehind: readonly LeftBehind[];
  /** 0: invariants hold; 3: a loop was detected; 1: anything else (a process left behind included). */
  readonly exitCode: 0 | 1 | 3;
  readonly notes: readonly string[];
}

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
/** The built-in vendors are started through their packages' published CLIs, as a user starts them. */
const vendorCli: Record<'tls' | 'http', string> = {
  http: path.join(path.dirname(require.resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js'),
  tls: path.join(path.dirname(require.resolve('@coproxy/proxy-tls/package.json')), 'dist/cli.js'),
};
/** A vendor that accepts one flow this many times is in a loop that will not end by itself. */
export const LOOP_BOUND = 4;
export const NETNS_ADDRESS = '10.200.0.1';

/** Every live child, so Ctrl-C or a failure can stop them all. */
const children = new Set<ChildProcess>();
/** The children that lead a process group of their own (the vendors). */
export const groups = new WeakSet<ChildProcess>();
export function killAll(): void {
  for (const child of children) stop(child, 'SIGKILL');
}

/** Vendors run in a process group of their own (a command may be a shell and its children): signals go to the group. */
export function stop(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  if (!groups.has(child)) return void child.kill(signal);
  try {
    process.kill(-child.pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // ESRCH: the group is gone already
  }
}

export async function runScenario(options: ScenarioOptions): Promise<Report> {
  const started = Date.now();
  const notes: string[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-'));
  const registry = path.join(tmp, 'registry');
  fs.mkdirSync(registry, { mode: 0o700 });
  const netns = options.backend === 'nftables' ? createNamespace() : undefined;
  const inNs = placeOf(netns);
  const host = netns === undefined ? '127.0.0.1' : NETNS_ADDRESS;
  const followers: LogFollower[] = [];
  const acceptances: Acceptance[] = [];
  let loopStopped = false;
  const env = { ...process.env, COPROXY_REGISTRY: registry };

  try {
    const vendors = assignVendors(options);
    const restarted = options.restart === undefined ? undefined : vendors.find((v) => v.id === options.restart);
    if (options.restart !== undefined && restarted === undefined) throw new Error(`restart ${options.restart}: no such vendor (have ${vendors.map((v) => v.id).join(', ')})`);
    // The origin, on a block of ports outside the ephemeral range (a flow's port is its
    // tag); it replaces a port it cannot bind and says which.
    if (options.flows < 1 || options.flows > MAX_FLOWS) throw new RangeError(`flows: 1..${MAX_FLOWS}, got ${options.flows}`);
    const ephemeral = ephemeralRange(netns);
    const ranges = portsOutside(ephemeral.range);
    const planned = planFlows(choosePorts(options.flows, ranges, options.seed, options.originPortBase), options.seed, netns !== undefined, options.shape);
    const listening = await startOrigin(inNs, tmp, { host, flows: planned, caDir: path.join(tmp, 'origin-ca'), ranges }, env);
    const origin = listening.child;
    const flows = planned.map((flow, i) => ({ ...flow, port: listening.ports[i] ?? flow.port }));
    for (const r of listening.replaced) notes.push(`flow ${r.index}: port ${r.from} could not be bound (${r.code}), the origin listened on ${r.to} instead`);
    const range = portList(flows.map((flow) => flow.port));
    const udpFlows = flows.filter((flow) => flow.kind === 'udp');
    const udpRange = udpFlows.length === 0 ? undefined : portList(udpFlows.map((flow) => flow.port));

    const vendorProcesses = new Map<string, ChildProcess>();
    // Acceptances per vendor and port, counted as they come: a filter over all of them per
    // line made a 10,000-flow run quadratic.
    const counts = new Map<string, number>();
    /** Where each vendor's connection is in `acceptances`, for its closed line (a restarted vendor's ids start again: the latest wins). */
    const acceptanceAt = new Map<string, number>();
    const onAccepted = (acceptance: Acceptance): void => {
      acceptanceAt.set(`${acceptance.vendor} ${acceptance.connectionId}`, acceptances.length);
      acceptances.push(acceptance);
      const key = `${acceptance.vendor} ${acceptance.port}`;
      const count = (counts.get(key) ?? 0) + 1;
      counts.set(key, count);
      if (count >= LOOP_BOUND && !loopStopped) {
        // A loop that does not end by itself: stopping the vendors is the bound.
        loopStopped = true;
        notes.push(`vendor ${acceptance.vendor} accepted the flow on port ${acceptance.port} ${count} times: vendors stopped to end the loop`);
        for (const child of vendorProcesses.values()) stop(child, 'SIGKILL');
      }
    };
    // A UDP flow's datagram counts come in its `closed` line, after its `accepted` one.
    const onClosed = (vendor: string, connectionId: string, datagrams: { fromClient: number; toClient: number }): void => {
      const i = acceptanceAt.get(`${vendor} ${connectionId}`);
      if (i !== undefined) acceptances[i] = { ...acceptances[i]!, datagrams };
    };
    const starts = new Map<string, number>();
    const launch = async (vendor: VendorInfo): Promise<void> => {
      const n = (starts.get(vendor.id) ?? 0) + 1;
      starts.set(vendor.id, n);
      const log = path.join(tmp, `events-${vendor.id}-${n}.jsonl`);
      const child = await startVendor(inNs, vendor, { range, udpRange, backend: options.backend, env, log, followers, notes, onAccepted, onClosed });
      vendorProcesses.set(vendor.id, child);
    };
    for (const vendor of vendors) await launch(vendor);

    const phases: { phase: Phase | undefined; flows: FlowSpec[] }[] =
      restarted === undefined
        ? [{ phase: undefined, flows }]
        : [
            { phase: 'before-restart', flows: flows.filter((_, i) => i < flows.length / 3) },
            { phase: 'vendor-down', flows: flows.filter((_, i) => i >= flows.length / 3 && i < (2 * flows.length) / 3) },
            { phase: 'restarted', flows: flows.filter((_, i) => i >= (2 * flows.length) / 3) },
          ];
    const phaseOf = new Map<number, Phase | undefined>();
    const clientReports: ClientFlowReport[] = [];
    for (const { phase, flows: phaseFlows } of phases) {
      if (phase === 'vendor-down' && restarted !== undefined) {
        const child = vendorProcesses.get(restarted.id)!;
        stop(child, 'SIGKILL');
        await exited(child);
        // The group leader (a shell) may be reaped before the vendor under it: a restart
        // that came first would meet its own id still in use.
        await groupGone(child);
      }
      if (phase === 'restarted' && restarted !== undefined && !loopStopped) await launch(restarted);
      for (const flow of phaseFlows) phaseOf.set(flow.index, phase);
      if (phaseFlows.length === 0) continue;
      const done = clientReports.length;
      clientReports.push(
        ...(await runClient(inNs, tmp, {
          host,
          flows: phaseFlows,
          seed: options.seed,
          backend: options.backend,
          registry,
          originCa: path.join(tmp, 'origin-ca', 'ca.crt'),
          concurrency: options.concurrency,
          flowTimeoutMs: options.flowTimeoutMs ?? 15_000,
        }, env, options.onProgress === undefined ? undefined : (n) => options.onProgress?.(done + n, flows.length))),
      );
    }
    const originReports = await askOrigin(origin);

    for (const child of vendorProcesses.values()) stop(child, 'SIGTERM');
    await Promise.all([...vendorProcesses.values()].map(exited));
    // A vendor's whole group gets the time to go; what still runs after that (a child moved
    // to a session of its own escapes the group) is left behind: named, then killed.
    await Promise.all([...vendorProcesses.values()].map(groupGone));
    const left = leftBehind(tmp);
    for (const process_ of left) {
      notes.push(`vendor ${process_.vendor} left pid ${process_.pid} running after it was stopped (${process_.command}): killed`);
      killPid(process_.pid);
    }
    for (const follower of followers.splice(0)) follower.stop();
    origin.kill('SIGTERM');
    await exited(origin);

    const byPort = <TItem extends { port: number }>(items: readonly TItem[]): Map<number, TItem[]> => {
      const map = new Map<number, TItem[]>();
      for (const item of items) {
        const list = map.get(item.port);
        if (list === undefined) map.set(item.port, [item]);
        else list.push(item);
      }
      return map;
    };
    const hopsByPort = byPort(acceptances);
    const clientsByPort = byPort(clientReports);
    const originsByPort = byPort(originReports);
    const order = [...vendors].sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1));
    const results = flows.map((flow) => {
      const phase = phaseOf.get(flow.index);
      const down = phase === 'vendor-down' ? restarted : undefined;
      const expectation: Expectation =
        down === undefined
          ? { vendors: order.map((v) => v.id), delivered: true }
          : down.failMode === 'open'
            ? { vendors: order.filter((v) => v !== down).map((v) => v.id), delivered: true, down: down.id }
            : { vendors: [], delivered: false, down: down.id };
      return judge(flow, phase, expectation, hopsByPort.get(flow.port) ?? [], clientsByPort.get(flow.port)?.[0], originsByPort.get(flow.port)?.[0]);
    });
    const loopDetected = results.some((r) => r.looped);
    const invariantsHold = results.every((r) => r.problems.length === 0);
    return {
      backend: options.backend,
      seed: options.seed,
      startedAt: new Date(started).toISOString(),
      durationMs: Date.now() - started,
      vendors,
      flows: results,
      loopDetected,
      loopStopped,
      invariantsHold,
      leftBehind: left,
      exitCode: loopDetected ? 3 : invariantsHold && left.length === 0 ? 0 : 1,
      notes,
    };
  } finally {
    for (const child of inNs.children) stop(child, 'SIGKILL');
    // A run that failed (a vendor never ready, a loop cut) leaves nothing running either.
    for (const { pid } of leftBehind(tmp)) killPid(pid);
    for (const follower of followers) follower.stop();
    if (netns !== undefined) removeNamespace(netns);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const asSpec = (vendor: VendorSpec | 'tls' | 'http'): VendorSpec => (typeof vendor === 'string' ? { kind: vendor } : vendor);

export function assignVendors(options: Pick<ScenarioOptions, 'vendors' | 'seed' | 'dropRecords'>): VendorInfo[] {
  const random = prng(options.seed);
  const specs = options.vendors.map(asSpec);
  const counts = new Map<VendorKind, number>();
  const many = specs.length > 2;
  const infos = specs.map((spec, i): VendorInfo => {
    const n = (counts.get(spec.kind) ?? 0) + 1;
    counts.set(spec.kind, n);
    const name = spec.kind === 'command' ? 'vendor' : `${spec.kind}-vendor`;
    const id = spec.id ?? (specs.filter((s) => s.kind === spec.kind && s.id === undefined).length > 1 ? `${name}-${n}` : name);
    // Two vendors: fixed priorities (TLS first, as a TLS inspector usually sits closest
    // to the app); more: random ones from the seed, to show the chain grows.
    const fixed = spec.kind === 'tls' ? 10 + i : spec.kind === 'http' ? 20 + i : 15 + i;
    const priority = spec.priority ?? (many ? Math.floor(random() * 1000) - 100 : fixed);
    if (spec.kind === 'command' && (spec.command === undefined || spec.command.trim() === '')) throw new Error(`vendor ${id}: an empty command`);
    if (spec.kind === 'command' && spec.dropsRecords === true) throw new Error(`vendor ${id}: only the built-in vendors can be told to drop records`);
    return { id, kind: spec.kind, priority, dropsRecords: spec.dropsRecords ?? false, failMode: spec.failMode ?? 'open', command: spec.command };
  });
  const ids = new Set(infos.map((v) => v.id));
  if (ids.size !== infos.length) throw new Error(`two vendors share an id: ${infos.map((v) => v.id).join(', ')}`);
  if (options.dropRecords !== undefined) {
    const target = infos.find((v) => v.id === options.dropRecords) ?? infos.find((v) => v.kind === options.dropRecords);
    if (target === undefined) throw new Error(`--drop-records ${options.dropRecords}: no such vendor (have ${infos.map((v) => v.id).join(', ')})`);
    if (target.kind === 'command') throw new Error(`--drop-records ${options.dropRecords}: only the built-in vendors can be told to drop records`);
    return infos.map((v) => (v === target ? { ...v, dropsRecords: true } : v));
  }
  return infos;
}

interface Expectation {
  /** Who must accept the flow, in order. */
  readonly vendors: readonly string[];
  /** Whether the flow must arrive; false: it must fail and never reach the origin. */
  readonly delivered: boolean;
  /** The vendor that was down meanwhile. */
  readonly down?: string;
}

/** One flow's verdict from what each process said about its port. @internal exported for its tests */
export function judge(
  flow: FlowSpec,
  phase: Phase | undefined,
  expected: Expectation,
  acceptances: readonly Acceptance[],
  client: ClientFlowReport | undefined,
  origin: OriginFlowReport | undefined,
): FlowResult {
  // Vendors report from their own processes, so their lines arrive in any order: the
  // records each saw (one more redirect per hop) give the order the flow took.
  const hops = orderHops(acceptances);
  const problems: string[] = [];
  const connections = clientConnections(flow, expected, hops, origin);
  const perVendor = new Map<string, number>();
  for (const hop of hops) perVendor.set(hop.vendor, (perVendor.get(hop.vendor) ?? 0) + 1);
  const looped = [...perVendor.values()].some((n) => n > connections);
  const base = { index: flow.index, kind: flow.kind, port: flow.port, viaCurl: flow.viaCurl, phase, expected: expected.vendors, hops, client, origin };
  if (!expected.delivered) {
    // A fail-closed vendor was down: nothing may reach the origin uninspected.
    if (expected.down !== undefined && (perVendor.get(expected.down) ?? 0) > 0) problems.push(`${expected.down} accepted it while it was down`);
    // A raw TCP client cannot tell a refused flow from an empty answer: bytes are the answer.
    if (client?.ok === true && client.receivedBytes > 0) problems.push(`the client got an answer (${client.receivedBytes} bytes) while ${expected.down ?? 'a vendor'} (fail-closed) was down`);
    if (origin !== undefined && origin.connections > 0) problems.push(`the origin got it uninspected while ${expected.down ?? 'a vendor'} (fail-closed) was down`);
    return { ...base, problems, looped };
  }
  for (const id of expected.vendors) {
    const n = perVendor.get(id) ?? 0;
    if (n !== connections) problems.push(`${id} accepted it ${n} times`);
  }
  for (const [id, n] of perVendor) if (!expected.vendors.includes(id)) problems.push(`${id} accepted it ${n} times while it was down`);
  const transport = flow.kind === 'udp' ? 'udp' : 'tcp';
  for (const hop of hops) if (hop.transport !== transport) problems.push(`${hop.vendor} accepted it as ${hop.transport}, expected ${transport}`);
  if (!looped && flow.kind === 'udp') {
    // Every datagram through every vendor, each way: what each vendor's closed line counted.
    for (const hop of hops) {
      if (hop.datagrams === undefined) problems.push(`${hop.vendor} logged no end of the UDP flow`);
      else if (hop.datagrams.fromClient !== flow.requests || hop.datagrams.toClient !== flow.requests)
        problems.push(`${hop.vendor} carried ${hop.datagrams.fromClient} datagrams from the client and ${hop.datagrams.toClient} back, expected ${flow.requests} each way`);
    }
  }
  if (!looped) {
    // Each client connection takes the chain on its own: a hop's place in it is the depth
    // of the records it saw.
    for (const hop of hops) {
      const place = hop.redirectedBy.length;
      const chain = expected.vendors.slice(0, place);
      if (hop.vendor !== expected.vendors[place - 1] || hop.redirectedBy.join('>') !== chain.join('>')) {
        problems.push(`${hop.vendor} saw records [${hop.redirectedBy.join(', ')}], expected [${expected.vendors.slice(0, expected.vendors.indexOf(hop.vendor) + 1).join(', ')}]`);
      }
      const state = place === 1 ? 'NotRedirected' : 'RedirectedByOther';
      if (hop.state !== state) problems.push(`${hop.vendor} saw ${hop.state}, expected ${state}`);
    }
  }
  if (client === undefined) problems.push('the client did not report it');
  else if (!client.ok) problems.push(`the client failed: ${client.error ?? 'unknown'}`);
  if (origin === undefined) problems.push('the origin never saw it');
  if (client?.ok === true && origin !== undefined) {
    if (origin.received !== client.sent) problems.push(`the origin received other bytes than the client sent (${origin.receivedBytes} of ${client.sentBytes})`);
    if (origin.sent !== client.received) problems.push(`the client got back other bytes than the origin sent (${client.receivedBytes} bytes)`);
  }
  return { ...base, problems, looped };
}

/**
 * How many TCP connections the client opened for one flow. Every flow is one connection
 * (HTTP keep-alive included), but curl sends a request again on a new connection when its
 * reused one died before the answer (seen at 600 flows on nftables on a machine loaded far
 * beyond its two cores): that second connection is a client's, not a loop. It comes to the
 * first vendor fresh (only that vendor's own redirect in its records) and reaches the
 * origin as a connection of its own; a flow coming back in a loop has records, or, from a
 * vendor that dropped them all, adds no origin connection. So: the fresh acceptances at the
 * first vendor, at most the origin's connections, at least one. UDP flows: one each.
 */
function clientConnections(flow: FlowSpec, expected: Expectation, hops: readonly Acceptance[], origin: OriginFlowReport | undefined): number {
  const first = expected.vendors[0];
  if (flow.kind === 'udp' || first === undefined || origin === undefined) return 1;
  const fresh = hops.filter((hop) => hop.vendor === first && hop.redirectedBy.length === 1 && hop.redirectedBy[0] === first).length;
  return Math.max(1, Math.min(fresh, origin.connections));
}

/**
 * By records depth; at equal depth (only when a vendor dropped records, so depth no longer
 * grows by one per hop), a vendor's second acceptance comes after the others': it is the
 * flow coming back.
 */
function orderHops(hops: readonly Acceptance[]): Acceptance[] {
  const byDepth = [...hops].sort((a, b) => a.redirectedBy.length - b.redirectedBy.length);
  const ordered: Acceptance[] = [];
  while (byDepth.length > 0) {
    const depth = byDepth[0]!.redirectedBy.length;
    const group = byDepth.filter((h) => h.redirectedBy.length === depth);
    byDepth.splice(0, group.length);
    const seen = (h: Acceptance): boolean => ordered.some((o) => o.vendor === h.vendor);
    ordered.push(...group.filter((h) => !seen(h)), ...group.filter(seen));
  }
  return ordered;
}

/** Where a run's processes start (its namespace, if any), and the run's live children. */
export type InNs = ((command: string, args: readonly string[]) => [string, string[]]) & { readonly children: Set<ChildProcess> };

/** The run's own children go with it: several runs may share this process (conformance). */
export function placeOf(netns: string | undefined): InNs {
  return Object.assign(
    (command: string, args: readonly string[]): [string, string[]] => (netns === undefined ? [command, [...args]] : ['ip', ['netns', 'exec', netns, command, ...args]]),
    { children: new Set<ChildProcess>() },
  );
}

/** A child of this run: stopped with the run, or with every run on Ctrl-C. */
export function adopt(inNs: InNs, child: ChildProcess): void {
  children.add(child);
  inNs.children.add(child);
  child.once('exit', () => {
    children.delete(child);
    inNs.children.delete(child);
  });
}

/** Writes a child's arguments to a file in the run's directory: argv holds at most 128 KiB per string on Linux. */
function argsFile(tmp: string, name: string, args: object): string {
  const file = path.join(tmp, `${name}-args.json`);
  fs.writeFileSync(file, JSON.stringify(args), { mode: 0o600 });
  return file;
}

function startOrigin(
  inNs: InNs,
  tmp: string,
  originArgs: { host: string; flows: readonly FlowSpec[]; caDir: string; ranges: readonly { from: number; to: number }[] },
  env: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; ports: number[]; replaced: PortReplacement[] }> {
  const [command, args] = inNs(process.execPath, [path.join(here, 'origin.js'), argsFile(tmp, 'origin', originArgs)]);
  const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'pipe', 'ipc'], env });
  adopt(inNs, child);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  // Listening on 10,000 ports and opening the CA takes a few seconds on a busy machine.
  const readyWithin = 20_000 + originArgs.flows.length * 5;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the origin was not ready within ${readyWithin / 1000} s`)), readyWithin);
    child.on('message', (message: OriginMessage) => {
      if ('ready' in message) {
        clearTimeout(timer);
        resolve({ child, ports: message.ports, replaced: message.replaced });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the origin exited with ${code}: ${stderr.trim()}`));
    });
  });
}

function askOrigin(origin: ChildProcess): Promise<OriginFlowReport[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the origin did not report within 10 s')), 10_000);
    const onMessage = (message: OriginMessage): void => {
      if (!('flows' in message)) return;
      clearTimeout(timer);
      origin.off('message', onMessage);
      resolve(message.flows);
    };
    origin.on('message', onMessage);
    origin.send('report');
  });
}

export interface VendorStart {
  readonly range: string;
  readonly backend: Backend;
  readonly env: NodeJS.ProcessEnv;
  /** The event log file this start of the vendor writes (core's COPROXY_EVENT_LOG). */
  readonly log: string;
  readonly followers: LogFollower[];
  readonly notes: string[];
  readonly onAccepted: (acceptance: Acceptance) => void;
  /** A UDP flow the vendor accepted ended: its datagram counts. */
  readonly onClosed?: (vendor: string, connectionId: string, datagrams: { fromClient: number; toClient: number }) => void;
  /** The UDP ports to redirect (`--udp-ports`), when the run has UDP flows. */
  readonly udpRange?: string | undefined;
}

/**
 * What a vendor command is told: in its environment, and in place of `{name}` in the
 * command. `udpPorts` is `none` when the run has no UDP flows (the kit's `--udp-ports` takes it).
 */
export function vendorParameters(vendor: VendorInfo, range: string, backend: Backend, udpRange?: string): Record<string, string> {
  return { id: vendor.id, priority: String(vendor.priority), ports: range, udpPorts: udpRange ?? 'none', backend, failMode: vendor.failMode };
}

const PARAMETER_ENV: Record<string, string> = {
  id: 'COPROXY_VENDOR_ID',
  priority: 'COPROXY_VENDOR_PRIORITY',
  ports: 'COPROXY_VENDOR_PORTS',
  udpPorts: 'COPROXY_VENDOR_UDP_PORTS',
  backend: 'COPROXY_VENDOR_BACKEND',
  failMode: 'COPROXY_VENDOR_FAIL_MODE',
};

/** `{id}`, `{priority}`, `{ports}`, `{udpPorts}`, `{backend}`, `{failMode}` replaced; their values are shell-safe (ids are [a-z0-9-]). */
export function expandCommand(command: string, parameters: Record<string, string>): string {
  return command.replace(/\{(id|priority|ports|udpPorts|backend|failMode)\}/g, (_, name: string) => parameters[name]!);
}

/**
 * Starts a vendor and follows its event log: it is ready when its redirector's `installed`
 * line comes, and each `accepted` line of that redirector is an acceptance. A built-in
 * vendor is started through its CLI; any other through `sh -c` with its parameters.
 */
export function startVendor(inNs: InNs, vendor: VendorInfo, start: VendorStart): Promise<ChildProcess> {
  const parameters = vendorParameters(vendor, start.range, start.backend, start.udpRange);
  const env: NodeJS.ProcessEnv = { ...start.env, COPROXY_EVENT_LOG: start.log };
  for (const [name, value] of Object.entries(parameters)) env[PARAMETER_ENV[name]!] = value;
  let argv: [string, string[]];
  if (vendor.kind === 'command') {
    argv = inNs('/bin/sh', ['-c', expandCommand(vendor.command ?? '', parameters)]);
  } else {
    // --unrecognised relay: the raw TCP flows stand for a protocol neither vendor knows, and
    // both vendors block unrecognised bytes unless told otherwise.
    const cliArgs = [
      vendorCli[vendor.kind], '--id', vendor.id, '--priority', parameters.priority!, '--ports', start.range, '--backend', start.backend,
      '--fail-mode', vendor.failMode, '--unrecognised', 'relay', '--log-level', 'warn',
    ];
    // UDP flows (the run's --udp): both vendors follow --unrecognised for a datagram protocol they do not know.
    if (start.udpRange !== undefined) cliArgs.push('--udp-ports', start.udpRange);
    if (vendor.dropsRecords) cliArgs.push('--drop-records');
    argv = inNs(process.execPath, cliArgs);
  }
  // A group of its own: a command may be a shell with children, and they all stop together.
  const child = spawn(argv[0], argv[1], { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
  adopt(inNs, child);
  groups.add(child);
  // What it printed last (both streams: a vendor may log its failure to either), for the error when it does not start.
  let stderr = '';
  const keep = (chunk: Buffer): void => void (stderr = (stderr + chunk.toString()).slice(-4096));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`vendor ${vendor.id} was not ready within 20 s (no 'installed' line in its event log): ${stderr.trim()}`)), 20_000);
    const others = new Set<string>();
    start.followers.push(
      new LogFollower(start.log, (line) => {
        if (line.redirectorId !== vendor.id) {
          // A redirector under another id: not the one the testbed gave this vendor.
          if (!others.has(line.redirectorId)) start.notes.push(`vendor ${vendor.id} created a redirector '${line.redirectorId}': its events are not counted`);
          others.add(line.redirectorId);
          return;
        }
        if (line.event === 'installed') {
          clearTimeout(timer);
          resolve(child);
        } else if (line.event === 'accepted') {
          start.onAccepted({ vendor: vendor.id, port: line.port, transport: line.transport, state: line.state, redirectedBy: line.redirectedBy, connectionId: line.connectionId });
        } else if (line.event === 'rejected') {
          // Reported once per vendor and error: a flow that never arrived may have been refused here.
          const note = `vendor ${vendor.id} refused a connection or datagram: ${line.error}`;
          if (!start.notes.includes(note)) start.notes.push(note);
        } else if (line.event === 'closed' && line.transport === 'udp') {
          start.onClosed?.(vendor.id, line.connectionId, { fromClient: line.datagramsFromClient ?? 0, toClient: line.datagramsToClient ?? 0 });
        }
      }),
    );
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`vendor ${vendor.id} exited (${code ?? signal}) before it was ready: ${stderr.trim()}`));
    });
  });
}

function runClient(inNs: InNs, tmp: string, args: { readonly flows: readonly unknown[]; readonly [key: string]: unknown }, env: NodeJS.ProcessEnv, onProgress: ScenarioOptions['onProgress']): Promise<ClientFlowReport[]> {
  const total = args.flows.length;
  const [command, argv] = inNs(process.execPath, [path.join(here, 'client.js'), argsFile(tmp, 'client', args)]);
  const child = spawn(command, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env });
  adopt(inNs, child);
  return new Promise((resolve, reject) => {
    child.on('message', (message: ClientMessage) => {
      if ('progress' in message) onProgress?.(message.progress, total);
      if ('done' in message) resolve(message.done);
    });
    // 'close', not 'exit': 'exit' can come before the last IPC message has been read.
    child.once('close', (code) => reject(new Error(`the client exited with ${code} before reporting`)));
  });
}

/** A process a vendor of the run started, found by the run's event log in its environment. */
export interface LeftBehind {
  readonly pid: number;
  readonly vendor: string;
  readonly command: string;
}

/** Errors of /proc reads that mean the process is gone or not readable: not ours to judge. */
const PROC_GONE = new Set(['ENOENT', 'ESRCH', 'EACCES', 'EPERM']);

/**
 * The processes still running that a vendor of this run started: each inherited
 * COPROXY_EVENT_LOG under the run's directory, whatever group or session it moved to
 * (Linux's /proc; a zombie shows no environment and is not counted).
 */
export function leftBehind(tmp: string): LeftBehind[] {
  const logPrefix = `COPROXY_EVENT_LOG=${path.join(tmp, 'events-')}`;
  const found: LeftBehind[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let environ: string[];
    let command: string;
    try {
      environ = fs.readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0');
      command = fs.readFileSync(`/proc/${entry}/cmdline`, 'latin1').split('\0').join(' ').trim();
    } catch (error) {
      if (PROC_GONE.has((error as NodeJS.ErrnoException).code ?? '')) continue;
      throw error;
    }
    if (!environ.some((variable) => variable.startsWith(logPrefix))) continue;
    const vendor = environ.find((variable) => variable.startsWith('COPROXY_VENDOR_ID='))?.slice('COPROXY_VENDOR_ID='.length) ?? 'unknown';
    found.push({ pid: Number(entry), vendor, command: command.slice(0, 200) });
  }
  return found;
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // ESRCH: gone meanwhile
  }
}

/** Resolves once no process of the child's group is left (at most 5 s). */
async function groupGone(child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 5000;
  while (child.pid !== undefined && Date.now() < deadline) {
    try {
      process.kill(-child.pid, 0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ESRCH') return;
      throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

let namespaces = 0;

/** nftables runs: a network namespace of the run's own, with loopback up and the origin's address on it. */
export function createNamespace(): string {
  const name = `coproxy-testbed-${process.pid}-${++namespaces}`;
  execFileSync('ip', ['netns', 'add', name]);
  try {
    execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    execFileSync('ip', ['-n', name, 'addr', 'add', `${NETNS_ADDRESS}/24`, 'dev', 'lo']);
  } catch (error) {
    removeNamespace(name);
    throw error;
  }
  return name;
}

export function removeNamespace(name: string): void {
  const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'latin1' }).split('\n').filter(Boolean);
  // A process listed a moment ago may have been reaped since (a vendor's grandchild, init's now): killPid takes that.
  for (const pid of pids) killPid(Number(pid));
  execFileSync('ip', ['netns', 'del', name]);
}
