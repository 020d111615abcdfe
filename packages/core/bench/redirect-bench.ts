/**
 * What a backend costs: connections per second and bytes per second on loopback through
 * 0 (direct), 1 and 2 pass-through redirectors, measured side by side in one run and
 * reported as absolute figures and as ratios to the direct case.
 *
 * The origin and each vendor run in their own child process (this script, forked with
 * `origin` or `vendor …`), so the client and the proxies do not share one event loop.
 * `--backend embedded` (default) uses a fresh temporary registry and 127.0.0.1 only; the
 * client dials through core's `connect()`. `--backend nftables` (root) runs the whole
 * bench inside a network namespace it creates and removes; the client is plain
 * `net.connect` and the kernel redirects it.
 *
 * ```sh
 * pnpm bench                                   # from the repo root: both backends
 * BENCH_SECONDS=2 BENCH_MIB=64 node bench/dist/redirect-bench.js --backend nftables --json bench.json
 * ```
 *
 * Environment: `BENCH_SECONDS` (3) per configuration for the connection rate,
 * `BENCH_CONCURRENCY` (32) concurrent connection loops, `BENCH_MIB` (256) sent through one
 * connection for the byte rate.
 */
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
// The package by its own name: the bench measures the built package, as a user gets it.
import { BACKEND_NAMES, connect, createRedirector, relay, type AcceptedConnection, type BackendName } from '@coproxy/core';
import { ForkedChildren, describeError, exited, positiveFromEnv, printRows, ratioText, serveForked, type Forked, type ForkedService } from '@coproxy/bench-kit';

const HOST = '127.0.0.1';
/** The origin's modes, chosen by the first byte of a connection. */
const ECHO = 0x45; // 'E': echo every byte, this one included
const SINK = 0x53; // 'S': count the bytes after this one, reply with the count on end
const VENDORS = [
  { id: 'bench-a', priority: 10 },
  { id: 'bench-b', priority: 20 },
] as const;
const CONFIGURATIONS = [
  { name: 'direct', vendors: 0 },
  { name: '1 redirector', vendors: 1 },
  { name: '2 redirectors', vendors: 2 },
] as const;
const MAX_CONNECTIONS = 200_000;
/** Loops stop early once this many connections have failed: the figures would be noise. */
const MAX_ERRORS = 100;
const WARMUP_SECONDS = 0.5;
const CONNECTION_TIMEOUT_MS = 10_000;
const CHILD_TIMEOUT_MS = 10_000;
const CHUNK_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------------------
// What a child counts, asked for over IPC

interface ChildStats {
  /** Connections the origin or vendor accepted. */
  readonly accepted: number;
  /** Vendors: accepted connections by the number of redirects in their records. */
  readonly hops: Readonly<Record<string, number>>;
  /** Connections that ended in an error (onward connect, relay, protocol). */
  readonly failures: number;
}

// ---------------------------------------------------------------------------------------
// Children: the origin and the vendors

/** An echo/sink server: see {@link ECHO} and {@link SINK}. */
async function startOrigin(): Promise<ForkedService<ChildStats>> {
  let accepted = 0;
  let failures = 0;
  // Half-open, so a sink can still reply after the client has finished sending.
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    accepted++;
    let mode: number | undefined;
    let count = 0;
    socket.on('error', () => {
      failures++;
      socket.destroy();
    });
    socket.on('data', (chunk: Buffer) => {
      if (mode === undefined) {
        mode = chunk[0];
        if (mode !== ECHO && mode !== SINK) return void socket.destroy(new Error(`unknown mode byte ${String(mode)}`));
        if (mode === SINK) chunk = chunk.subarray(1);
      }
      if (mode === SINK) {
        count += chunk.length;
      } else if (!socket.write(chunk)) {
        socket.pause();
        socket.once('drain', () => socket.resume());
      }
    });
    socket.on('end', () => (mode === SINK ? socket.end(String(count)) : socket.end()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    stats: () => ({ accepted, hops: {}, failures }),
    close: () => {
      server.close();
      return Promise.resolve();
    },
  };
}

/** A pass-through vendor: every accepted connection is relayed to its destination unchanged. */
async function startVendor(id: string, priority: number, registry: string, originPort: number, backend: BackendName): Promise<ForkedService<ChildStats>> {
  const redirector = createRedirector({ id, priority, registry, backend, match: { ports: [originPort] } });
  let accepted = 0;
  let failures = 0;
  const hops: Record<string, number> = {};
  const subscription = redirector.accepted$.subscribe({
    next: (connection) => {
      accepted++;
      const key = String(connection.records.hops);
      hops[key] = (hops[key] ?? 0) + 1;
      void passThrough(connection, (error) => {
        if (failures++ === 0) console.error(`redirect-bench vendor ${id}: ${connection.id}:`, error);
      });
    },
    error: (error: unknown) => {
      console.error(`redirect-bench vendor ${id}: accepted$ failed:`, error);
      process.exit(1);
    },
  });
  await redirector.installed();
  return {
    port: redirector.listening?.port ?? 0,
    stats: () => ({ accepted, hops: { ...hops }, failures }),
    close: async () => {
      subscription.unsubscribe();
      await redirector.close();
    },
  };
}

/** Never rejects: every failure ends in `onFailure` and both sockets destroyed. */
async function passThrough(connection: AcceptedConnection, onFailure: (error: unknown) => void): Promise<void> {
  let upstream: net.Socket;
  try {
    upstream = await connection.connectOnward();
  } catch (error) {
    connection.socket.destroy();
    onFailure(error);
    return;
  }
  const { error } = await relay(connection.socket, upstream);
  if (error !== undefined) onFailure(error);
}

// ---------------------------------------------------------------------------------------
// The bench: managing children

/** Live children, so a signal or a failure can stop them all. */
const children = new ForkedChildren(fileURLToPath(import.meta.url), CHILD_TIMEOUT_MS);

const askStats = (child: Forked): Promise<ChildStats> => children.askStats<ChildStats>(child);

// ---------------------------------------------------------------------------------------
// The bench: measuring

interface Target {
  readonly port: number;
  readonly registry: string;
  /** `nftables`: the client dials plainly and the kernel redirects it. */
  readonly backend: BackendName;
  /** Connections opened by the client, so the vendors' counts can be checked against it. */
  opened: number;
}

/** `connect()`, bounded in time: a connection that turns up late is destroyed. */
function connectWithin(target: Target, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      reject(new Error(`connect did not complete within ${timeoutMs} ms`));
    }, timeoutMs);
    const opening =
      target.backend === 'embedded' ? connect({ host: HOST, port: target.port, registry: target.registry }) : plainConnect(HOST, target.port);
    opening.then(
      (socket) => {
        clearTimeout(timer);
        if (timedOut) return void socket.destroy();
        target.opened++;
        resolve(socket);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

function plainConnect(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** One round trip: connect, write one byte, read it back, end, wait for close. */
async function echoOnce(target: Target): Promise<void> {
  const socket = await connectWithin(target, CONNECTION_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    let echoed = false;
    const timer = setTimeout(() => socket.destroy(new Error('echo timed out')), CONNECTION_TIMEOUT_MS);
    socket.on('data', (chunk: Buffer) => {
      if (echoed || chunk.length !== 1 || chunk[0] !== ECHO) {
        socket.destroy(new Error(`unexpected echo ${chunk.toString('hex')}`));
        return;
      }
      echoed = true;
      socket.end();
    });
    socket.on('error', reject);
    socket.once('close', () => {
      clearTimeout(timer);
      if (echoed) resolve();
      else reject(new Error('closed before the echo'));
    });
    socket.write(Buffer.of(ECHO));
  });
}

interface RateResult {
  readonly completed: number;
  readonly errors: number;
  readonly seconds: number;
  readonly firstError: unknown;
}

/** `concurrency` loops of `echoOnce` until the time is up, the cap reached, or too many fail. */
async function connectionRate(target: Target, seconds: number, concurrency: number): Promise<RateResult> {
  let started = 0;
  let completed = 0;
  let errors = 0;
  let firstError: unknown;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async (): Promise<void> => {
    while (performance.now() < deadline && started < MAX_CONNECTIONS && errors < MAX_ERRORS) {
      started++;
      try {
        await echoOnce(target);
        completed++;
      } catch (error) {
        errors++;
        firstError ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  return { completed, errors, seconds: (performance.now() - start) / 1000, firstError };
}

interface TransferResult {
  readonly bytes: number;
  readonly seconds: number;
}

/**
 * Sends `bytes` to the origin's sink as fast as backpressure allows; timed from the first
 * write to the arrival of the origin's count, which must equal what was sent.
 */
async function transfer(target: Target, bytes: number): Promise<TransferResult> {
  const timeoutMs = 60_000 + bytes / 2 ** 20 * 500;
  const socket = await connectWithin(target, CONNECTION_TIMEOUT_MS);
  const chunk = Buffer.alloc(CHUNK_BYTES);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131) & 0xff;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => socket.destroy(new Error(`transfer timed out after ${timeoutMs} ms`)), timeoutMs);
    const reply: Buffer[] = [];
    let replyBytes = 0;
    let seconds: number | undefined;
    let result: TransferResult | undefined;
    socket.on('data', (data: Buffer) => {
      seconds ??= (performance.now() - start) / 1000;
      reply.push(data);
      replyBytes += data.length;
      if (replyBytes > 20) socket.destroy(new Error('the count reply is too long'));
    });
    socket.on('end', () => {
      const text = Buffer.concat(reply).toString('latin1');
      if (text !== String(bytes)) {
        socket.destroy(new Error(`sent ${bytes} bytes, the origin counted ${JSON.stringify(text)}`));
      } else if (seconds !== undefined) {
        result = { bytes, seconds };
      }
    });
    socket.on('error', reject);
    socket.once('close', () => {
      clearTimeout(timer);
      if (result !== undefined) resolve(result);
      else reject(new Error('the connection closed without a valid count'));
    });

    let remaining = bytes;
    const pump = (): void => {
      while (remaining > 0) {
        const size = Math.min(chunk.length, remaining);
        remaining -= size;
        if (!socket.write(size === chunk.length ? chunk : chunk.subarray(0, size))) {
          socket.once('drain', pump);
          return;
        }
      }
      socket.end();
    };
    const start = performance.now();
    socket.write(Buffer.of(SINK));
    pump();
  });
}

// ---------------------------------------------------------------------------------------
// The bench: configurations and report

interface Settings {
  readonly backend: BackendName;
  readonly seconds: number;
  readonly concurrency: number;
  readonly mib: number;
  readonly json: string | undefined;
}

interface ConfigurationResult {
  readonly name: string;
  readonly redirectors: number;
  readonly connections: number;
  readonly connectionSeconds: number;
  readonly connectionsPerSecond: number;
  readonly bytes: number;
  readonly bytesSeconds: number;
  readonly megabytesPerSecond: number;
  /** Connections accepted by the origin and each vendor, all opened by the client. */
  readonly accepted: Readonly<Record<string, number>>;
}

async function runConfiguration(
  configuration: (typeof CONFIGURATIONS)[number],
  origin: Forked,
  registry: string,
  settings: Settings,
): Promise<ConfigurationResult> {
  const vendors: Forked[] = [];
  try {
    for (const vendor of VENDORS.slice(0, configuration.vendors)) {
      const args = ['vendor', vendor.id, String(vendor.priority), registry, String(origin.port), settings.backend];
      vendors.push(await children.start(vendor.id, args));
    }
    const originBefore = await askStats(origin);
    const target: Target = { port: origin.port, registry, backend: settings.backend, opened: 0 };

    const warmup = await connectionRate(target, WARMUP_SECONDS, settings.concurrency);
    const rate = await connectionRate(target, settings.seconds, settings.concurrency);
    for (const run of [warmup, rate]) {
      if (run.errors > 0) {
        throw new Error(`${configuration.name}: ${run.errors} connections failed; the first: ${describeError(run.firstError)}`);
      }
    }
    const bytes = await transfer(target, settings.mib * 2 ** 20);

    // Every connection the client opened must have crossed each vendor once, in priority
    // order (the n-th vendor sees n redirects in the records), and reached the origin.
    const originAfter = await askStats(origin);
    const accepted: Record<string, number> = { origin: originAfter.accepted - originBefore.accepted };
    const problems: string[] = [];
    const seen = [`origin ${accepted.origin}`];
    if (accepted.origin !== target.opened) problems.push(`origin accepted ${accepted.origin}`);
    if (originAfter.failures !== originBefore.failures) problems.push(`origin saw ${originAfter.failures - originBefore.failures} failures`);
    for (const [index, vendor] of vendors.entries()) {
      const stats = await askStats(vendor);
      const hop = index + 1;
      const atHop = stats.hops[String(hop)] ?? 0;
      accepted[vendor.name] = stats.accepted;
      seen.push(`${vendor.name} ${stats.accepted} (${atHop} as redirect ${hop})`);
      if (stats.accepted !== target.opened) problems.push(`${vendor.name} accepted ${stats.accepted}`);
      if (atHop !== stats.accepted) problems.push(`${vendor.name} took ${atHop} as redirect ${hop}, hops seen ${JSON.stringify(stats.hops)}`);
      if (stats.failures !== 0) problems.push(`${vendor.name} saw ${stats.failures} failures`);
    }
    console.log(`  ${configuration.name}: client opened ${target.opened}; accepted: ${seen.join(', ')}`);
    if (problems.length > 0) {
      throw new Error(`${configuration.name}: expected ${target.opened} everywhere, but ${problems.join('; ')}`);
    }
    return {
      name: configuration.name,
      redirectors: configuration.vendors,
      connections: rate.completed,
      connectionSeconds: rate.seconds,
      connectionsPerSecond: rate.completed / rate.seconds,
      bytes: bytes.bytes,
      bytesSeconds: bytes.seconds,
      megabytesPerSecond: bytes.bytes / bytes.seconds / 1e6,
      accepted,
    };
  } finally {
    await Promise.all(vendors.map((vendor) => children.stop(vendor)));
  }
}

function readSettings(): Settings {
  const { values } = parseArgs({
    options: { json: { type: 'string' }, backend: { type: 'string', default: 'embedded' } },
    strict: true,
    allowPositionals: false,
  });
  if (values.backend !== 'embedded' && values.backend !== 'nftables') {
    throw new Error(`--backend is embedded or nftables, got ${JSON.stringify(values.backend)}`);
  }
  return {
    backend: values.backend,
    seconds: positiveFromEnv('BENCH_SECONDS', 3, false),
    concurrency: positiveFromEnv('BENCH_CONCURRENCY', 32, true),
    mib: positiveFromEnv('BENCH_MIB', 256, true),
    json: values.json,
  };
}

function printTable(results: readonly ConfigurationResult[]): void {
  const direct = results[0];
  const rows = [
    ['', 'conn/s', 'ratio', 'MB/s', 'ratio'],
    ...results.map((result) => [
      result.name,
      result.connectionsPerSecond.toFixed(0),
      ratioText(result.connectionsPerSecond, direct?.connectionsPerSecond),
      result.megabytesPerSecond.toFixed(1),
      ratioText(result.megabytesPerSecond, direct?.megabytesPerSecond),
    ]),
  ];
  printRows(rows);
}

/**
 * The nftables bench runs inside a network namespace of its own, so its tables and the
 * sysctl it sets touch nothing else: this process makes the namespace, runs the bench
 * again inside it, and removes it whatever happens.
 */
async function inNamespace(): Promise<number> {
  if (process.getuid?.() !== 0) {
    console.log('nftables backend: skipped, it needs root (nft tables, socket marks, a network namespace)');
    return 0;
  }
  const name = `coproxy-bench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', name]);
  try {
    execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
    const child = spawn('ip', ['netns', 'exec', name, process.execPath, fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, COPROXY_BENCH_NETNS: name },
    });
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const code = (await exited(child)).code ?? 1;
    process.off('SIGINT', forward);
    process.off('SIGTERM', forward);
    return code;
  } finally {
    const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'latin1' }).split('\n').filter(Boolean);
    for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
    execFileSync('ip', ['netns', 'del', name]);
  }
}

async function main(): Promise<void> {
  const settings = readSettings();
  if (settings.backend === 'nftables' && process.env.COPROXY_BENCH_NETNS === undefined) {
    process.exitCode = await inNamespace();
    return;
  }
  const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-bench-'));
  const cleanUp = (): void => {
    children.signalAll('SIGTERM');
    fs.rmSync(registry, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    console.error(`redirect-bench: ${signal}, stopping`);
    cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    const machine = {
      node: process.version,
      cpu,
      cores: os.cpus().length,
      date: new Date().toISOString(),
    };
    console.log(
      `${settings.backend} backend on ${HOST}${settings.backend === 'nftables' ? ` in network namespace ${process.env.COPROXY_BENCH_NETNS}` : ''}: ${settings.seconds} s per configuration, ${settings.concurrency} concurrent ` +
        `connections, ${settings.mib} MiB through one connection`,
    );
    const origin = await children.start('origin', ['origin']);
    const results: ConfigurationResult[] = [];
    for (const configuration of CONFIGURATIONS) {
      results.push(await runConfiguration(configuration, origin, registry, settings));
    }
    console.log('');
    printTable(results);
    console.log('');
    console.log(`Node ${machine.node}, ${machine.cpu}, ${machine.cores} cores, ${machine.date} (MB = 10^6 bytes)`);
    if (settings.json !== undefined) {
      const report = { ...machine, settings: { ...settings, json: undefined }, results };
      fs.writeFileSync(settings.json, JSON.stringify(report, null, 2) + '\n');
      console.log(`wrote ${path.resolve(settings.json)}`);
    }
    await children.stop(origin);
  } finally {
    await children.stopAll();
    fs.rmSync(registry, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function childArgs(): { id: string; priority: number; registry: string; originPort: number; backend: BackendName } {
  const [id = '', priority = '', registry = '', originPort = '', backend = ''] = process.argv.slice(3);
  const result = { id, priority: Number(priority), registry, originPort: Number(originPort), backend: backend as BackendName };
  if (id === '' || registry === '' || !Number.isInteger(result.priority) || !Number.isInteger(result.originPort) || !(BACKEND_NAMES as readonly string[]).includes(backend)) {
    throw new Error(`usage: redirect-bench vendor ID PRIORITY REGISTRY ORIGIN_PORT BACKEND, got ${process.argv.slice(3).join(' ')}`);
  }
  return result;
}

switch (process.argv[2] ?? '') {
  case 'origin':
    serveForked('redirect-bench origin', startOrigin);
    break;
  case 'vendor': {
    const { id, priority, registry, originPort, backend } = childArgs();
    serveForked(`redirect-bench vendor ${id}`, () => startVendor(id, priority, registry, originPort, backend));
    break;
  }
  default:
    main().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('redirect-bench failed:', error);
        process.exit(1);
      },
    );
}
