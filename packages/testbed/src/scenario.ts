import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { BackendName } from '@coproxy/core';
import { type FlowSpec, planFlows, prng } from './flows.js';
import { choosePorts, ephemeralRange, portList, portsOutside } from './ports.js';
import type { ClientFlowReport, ClientMessage, OriginFlowReport, OriginMessage, PortReplacement } from './protocol.js';

/** Any backend core's registry knows; the testbed's vendors run on Linux, so in practice embedded or nftables. */
export type Backend = BackendName;
export type VendorKind = 'tls' | 'http';

export interface ScenarioOptions {
  readonly backend: Backend;
  /** Vendor packages in start order; the same kind may appear several times. */
  readonly vendors: readonly VendorKind[];
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
}

/** The most flows a run takes: see the README ("Limits") for what bounds it. */
export const MAX_FLOWS = 10_000;

export interface VendorInfo {
  readonly id: string;
  readonly kind: VendorKind;
  readonly priority: number;
  readonly dropsRecords: boolean;
}

/** What one vendor said about one connection it accepted. */
export interface Acceptance {
  readonly vendor: string;
  readonly port: number;
  readonly state: string;
  readonly redirectedBy: readonly string[];
}

export interface FlowResult {
  readonly index: number;
  readonly kind: FlowSpec['kind'];
  readonly port: number;
  readonly viaCurl: boolean;
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
  /** 0: invariants hold; 3: a loop was detected; 1: anything else. */
  readonly exitCode: 0 | 1 | 3;
  readonly notes: readonly string[];
}

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
/** The vendors are started through their packages' published CLIs, as a user starts them. */
const vendorCli: Record<VendorKind, string> = {
  http: path.join(path.dirname(require.resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js'),
  tls: path.join(path.dirname(require.resolve('@coproxy/proxy-tls/package.json')), 'dist/cli.js'),
};
/** A vendor that accepts one flow this many times is in a loop that will not end by itself. */
const LOOP_BOUND = 4;
const NETNS_ADDRESS = '10.200.0.1';

/** Every live child, so Ctrl-C or a failure can stop them all. */
const children = new Set<ChildProcess>();
export function killAll(): void {
  for (const child of children) child.kill('SIGKILL');
}

export async function runScenario(options: ScenarioOptions): Promise<Report> {
  const started = Date.now();
  const notes: string[] = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-'));
  const registry = path.join(tmp, 'registry');
  fs.mkdirSync(registry, { mode: 0o700 });
  const netns = options.backend === 'nftables' ? createNamespace() : undefined;
  const inNs = (command: string, args: readonly string[]): [string, string[]] =>
    netns === undefined ? [command, [...args]] : ['ip', ['netns', 'exec', netns, command, ...args]];
  const host = netns === undefined ? '127.0.0.1' : NETNS_ADDRESS;
  const vendors = assignVendors(options);
  const acceptances: Acceptance[] = [];
  let loopStopped = false;
  const env = { ...process.env, COPROXY_REGISTRY: registry };

  try {
    // The origin, on a block of ports outside the ephemeral range (a flow's port is its
    // tag); it replaces a port it cannot bind and says which.
    if (options.flows < 1 || options.flows > MAX_FLOWS) throw new RangeError(`flows: 1..${MAX_FLOWS}, got ${options.flows}`);
    const ephemeral = ephemeralRange(netns);
    const ranges = portsOutside(ephemeral.range);
    const planned = planFlows(choosePorts(options.flows, ranges, options.seed, options.originPortBase), options.seed, netns !== undefined);
    const listening = await startOrigin(inNs, tmp, { host, flows: planned, caDir: path.join(tmp, 'origin-ca'), ranges }, env);
    const origin = listening.child;
    const flows = planned.map((flow, i) => ({ ...flow, port: listening.ports[i] ?? flow.port }));
    for (const r of listening.replaced) notes.push(`flow ${r.index}: port ${r.from} could not be bound (${r.code}), the origin listened on ${r.to} instead`);
    const range = portList(flows.map((flow) => flow.port));

    const vendorProcesses: ChildProcess[] = [];
    // Acceptances per vendor and port, counted as they come: a filter over all of them per
    // line made a 10,000-flow run quadratic.
    const counts = new Map<string, number>();
    for (const vendor of vendors) {
      vendorProcesses.push(await startVendor(inNs, vendor, range, options.backend, env, (acceptance) => {
        acceptances.push(acceptance);
        const key = `${acceptance.vendor} ${acceptance.port}`;
        const count = (counts.get(key) ?? 0) + 1;
        counts.set(key, count);
        if (count >= LOOP_BOUND && !loopStopped) {
          // A loop that does not end by itself: stopping the vendors is the bound.
          loopStopped = true;
          notes.push(`vendor ${acceptance.vendor} accepted the flow on port ${acceptance.port} ${count} times: vendors stopped to end the loop`);
          for (const child of vendorProcesses) child.kill('SIGKILL');
        }
      }));
    }

    const clientReports = await runClient(inNs, tmp, {
      host,
      flows,
      seed: options.seed,
      backend: options.backend,
      registry,
      originCa: path.join(tmp, 'origin-ca', 'ca.crt'),
      concurrency: options.concurrency,
      flowTimeoutMs: options.flowTimeoutMs ?? 15_000,
    }, env, options.onProgress);
    const originReports = await askOrigin(origin);

    for (const child of vendorProcesses) child.kill('SIGTERM');
    await Promise.all(vendorProcesses.map(exited));
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
    const results = flows.map((flow) =>
      judge(flow, vendors, hopsByPort.get(flow.port) ?? [], clientsByPort.get(flow.port)?.[0], originsByPort.get(flow.port)?.[0]),
    );
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
      exitCode: loopDetected ? 3 : invariantsHold ? 0 : 1,
      notes,
    };
  } finally {
    killAll();
    if (netns !== undefined) removeNamespace(netns);
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function assignVendors(options: ScenarioOptions): VendorInfo[] {
  const random = prng(options.seed);
  const counts = new Map<VendorKind, number>();
  const many = options.vendors.length > 2;
  const infos = options.vendors.map((kind, i) => {
    const n = (counts.get(kind) ?? 0) + 1;
    counts.set(kind, n);
    const id = options.vendors.filter((k) => k === kind).length > 1 ? `${kind}-vendor-${n}` : `${kind}-vendor`;
    // Two vendors: fixed priorities (TLS first, as a TLS inspector usually sits closest
    // to the app); more: random ones from the seed, to show the chain grows.
    const priority = many ? Math.floor(random() * 1000) - 100 : kind === 'tls' ? 10 + i : 20 + i;
    return { id, kind, priority, dropsRecords: false };
  });
  if (options.dropRecords !== undefined) {
    const target = infos.find((v) => v.id === options.dropRecords) ?? infos.find((v) => v.kind === options.dropRecords);
    if (target === undefined) throw new Error(`--drop-records ${options.dropRecords}: no such vendor (have ${infos.map((v) => v.id).join(', ')})`);
    return infos.map((v) => (v === target ? { ...v, dropsRecords: true } : v));
  }
  return infos;
}

/** One flow's verdict from what each process said about its port. */
function judge(
  flow: FlowSpec,
  vendors: readonly VendorInfo[],
  acceptances: readonly Acceptance[],
  client: ClientFlowReport | undefined,
  origin: OriginFlowReport | undefined,
): FlowResult {
  // Vendors report from their own processes, so their lines arrive in any order: the
  // records each saw (one more redirect per hop) give the order the flow took.
  const hops = orderHops(acceptances);
  const problems: string[] = [];
  const order = [...vendors].sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1)).map((v) => v.id);
  const connections = 1; // every flow is one client connection (HTTP keep-alive included)
  const perVendor = new Map<string, number>();
  for (const hop of hops) perVendor.set(hop.vendor, (perVendor.get(hop.vendor) ?? 0) + 1);
  const looped = [...perVendor.values()].some((n) => n > connections);
  for (const id of order) {
    const n = perVendor.get(id) ?? 0;
    if (n !== connections) problems.push(`${id} accepted it ${n} times`);
  }
  if (!looped) {
    hops.forEach((hop, i) => {
      const expected = order.slice(0, i + 1);
      if (hop.redirectedBy.join('>') !== expected.join('>')) problems.push(`${hop.vendor} saw records [${hop.redirectedBy.join(', ')}], expected [${expected.join(', ')}]`);
      const state = i === 0 ? 'NotRedirected' : 'RedirectedByOther';
      if (hop.state !== state) problems.push(`${hop.vendor} saw ${hop.state}, expected ${state}`);
    });
  }
  if (client === undefined) problems.push('the client did not report it');
  else if (!client.ok) problems.push(`the client failed: ${client.error ?? 'unknown'}`);
  if (origin === undefined) problems.push('the origin never saw it');
  if (client?.ok === true && origin !== undefined) {
    if (origin.received !== client.sent) problems.push(`the origin received other bytes than the client sent (${origin.receivedBytes} of ${client.sentBytes})`);
    if (origin.sent !== client.received) problems.push('the client got back other bytes than the origin sent');
  }
  return { index: flow.index, kind: flow.kind, port: flow.port, viaCurl: flow.viaCurl, hops, client, origin, problems, looped };
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

type InNs = (command: string, args: readonly string[]) => [string, string[]];

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
  children.add(child);
  child.once('exit', () => children.delete(child));
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

function startVendor(inNs: InNs, vendor: VendorInfo, range: string, backend: Backend, env: NodeJS.ProcessEnv, onAccepted: (a: Acceptance) => void): Promise<ChildProcess> {
  // --unrecognised relay: the raw TCP flows stand for a protocol neither vendor knows, and
  // both vendors block unrecognised bytes unless told otherwise.
  const cliArgs = [
    vendorCli[vendor.kind], '--id', vendor.id, '--priority', String(vendor.priority), '--ports', range, '--backend', backend,
    '--unrecognised', 'relay', '--log-level', 'info',
  ];
  if (vendor.dropsRecords) cliArgs.push('--drop-records');
  const [command, args] = inNs(process.execPath, cliArgs);
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  child.once('exit', () => children.delete(child));
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`vendor ${vendor.id} was not ready within 20 s: ${stderr.trim()}`)), 20_000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let entry: { msg?: string; connectionId?: string; destination?: { port?: number }; redirectedBy?: string[]; state?: string };
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return; // not a log line of ours (a stray print): vendors log JSON only
      }
      if (entry.msg === 'ready') {
        clearTimeout(timer);
        resolve(child);
      } else if (entry.msg === 'accepted' && entry.destination?.port !== undefined) {
        onAccepted({ vendor: vendor.id, port: entry.destination.port, state: entry.state ?? '', redirectedBy: entry.redirectedBy ?? [] });
      }
    });
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
  children.add(child);
  child.once('exit', () => children.delete(child));
  return new Promise((resolve, reject) => {
    child.on('message', (message: ClientMessage) => {
      if ('progress' in message) onProgress?.(message.progress, total);
      if ('done' in message) resolve(message.done);
    });
    // 'close', not 'exit': 'exit' can come before the last IPC message has been read.
    child.once('close', (code) => reject(new Error(`the client exited with ${code} before reporting`)));
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** nftables runs: a network namespace of the run's own, with loopback up and the origin's address on it. */
function createNamespace(): string {
  const name = `coproxy-testbed-${process.pid}`;
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

function removeNamespace(name: string): void {
  const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'latin1' }).split('\n').filter(Boolean);
  for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
  execFileSync('ip', ['netns', 'del', name]);
}
