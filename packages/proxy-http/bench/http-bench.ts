/**
 * What inspection costs: HTTP requests per second with 1 KiB responses (on keep-alive
 * connections, and with a new connection per request) and bytes per second for one large
 * response body, **direct** (the client straight to the origin) and **through this proxy**
 * on the embedded backend (the client dials with core's `createAgent({ registry,
 * keepAlive })`), measured side by side in one run and reported as absolute figures and
 * as ratios to direct.
 *
 * The origin and the proxy each run in a child process of their own (this script, forked
 * with `origin` or `proxy …`), the client in this one, so no two share an event loop. The
 * proxy runs with its defaults (no rules, no inspectors, a silent logger). Every response
 * is checked (status 200, the expected length), and afterwards the origin's and the
 * proxy's request counts must equal the client's: a bench that silently went around the
 * proxy would say so.
 *
 * ```sh
 * pnpm bench:http                           # from the repo root (builds first)
 * BENCH_SECONDS=5 BENCH_CONCURRENCY=64 node bench/dist/http-bench.js --json bench.json
 * node bench/dist/http-bench.js --cpu-prof /tmp/prof   # also profiles the proxy process
 * ```
 *
 * Environment: `BENCH_SECONDS` (3) per request-rate measurement, `BENCH_CONCURRENCY` (32)
 * requests in flight, `BENCH_MIB` (256) in the one large response. `--cpu-prof <dir>` runs
 * the proxy with `node --cpu-prof`, writes the profile there and prints the functions with
 * the most self time (the figures of that run include the profiler's overhead).
 */
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createAgent } from '@coproxy/core';
import type { Counter } from 'prom-client';
// The package by its own name: the bench measures the built package, as a user gets it.
import { createHttpProxy } from '@coproxy/proxy-http';
import { ForkedChildren, describeError, positiveFromEnv, printProfileSummary, printRows, ratioText, serveForked, type Forked, type ForkedService } from '@coproxy/bench-kit';

const HOST = '127.0.0.1';
const SMALL_BYTES = 1024;
const SMALL_PATH = '/small';
const LARGE_PATH = '/large';
const PROXY_ID = 'bench-http';
/** Caps on one rate measurement, whatever BENCH_SECONDS says. */
const MAX_REQUESTS = 1_000_000;
/** A measurement stops early once this many requests have failed: the figures would be noise. */
const MAX_ERRORS = 100;
const WARMUP_SECONDS = 0.5;
const REQUEST_TIMEOUT_MS = 10_000;
const CHILD_TIMEOUT_MS = 10_000;
const CHUNK_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------------------
// What a child counts, asked for over IPC

interface ChildStats {
  /** Requests the origin answered, or the proxy parsed. */
  readonly requests: number;
  /** TCP connections the origin accepted, or HTTP connections the proxy took. */
  readonly connections: number;
  /** Origin: failed sockets. Proxy: its error counter, by code. */
  readonly failures: Readonly<Record<string, number>>;
  /** CPU time the process has used, user + system, in microseconds. */
  readonly cpuMicros: number;
}

// ---------------------------------------------------------------------------------------
// Children: the origin and the proxy

/** `GET /small`: 1 KiB. `GET /large?bytes=N`: N bytes, streamed with backpressure. */
async function startOrigin(): Promise<ForkedService<ChildStats>> {
  const small = Buffer.alloc(SMALL_BYTES, 'x');
  const chunk = Buffer.alloc(CHUNK_BYTES);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131) & 0xff;
  let requests = 0;
  let connections = 0;
  let failures = 0;
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    requests++;
    const url = new URL(req.url ?? '/', 'http://origin');
    if (req.method === 'GET' && url.pathname === SMALL_PATH) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': SMALL_BYTES }).end(small);
      return;
    }
    const size = Number(url.searchParams.get('bytes'));
    if (req.method !== 'GET' || url.pathname !== LARGE_PATH || !Number.isSafeInteger(size) || size < 0) {
      res.writeHead(404, { 'content-length': 0 }).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    let remaining = size;
    const pump = (): void => {
      while (remaining > 0) {
        const length = Math.min(chunk.length, remaining);
        remaining -= length;
        if (!res.write(length === chunk.length ? chunk : chunk.subarray(0, length))) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  server.on('connection', (socket: net.Socket) => {
    connections++;
    socket.on('error', () => failures++);
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
    stats: () => Promise.resolve({ requests, connections, failures: failures === 0 ? {} : { socket: failures }, cpuMicros: cpuMicros() }),
    close: () => {
      server.closeAllConnections();
      server.close();
      return Promise.resolve();
    },
  };
}

/** The proxy as a library user gets it: defaults, taking connections to the origin's port. */
async function startProxy(registry: string, originPort: number): Promise<ForkedService<ChildStats>> {
  const proxy = createHttpProxy({ id: PROXY_ID, priority: 10, match: { ports: [originPort] }, registry, backend: 'embedded' });
  const listening = await proxy.listening();
  const total = async (counter: Counter): Promise<number> => (await counter.get()).values.reduce((sum, value) => sum + value.value, 0);
  return {
    port: listening.port,
    // Read from the proxy's own metrics, which it keeps anyway: counting costs the bench nothing.
    stats: async () => ({
      requests: await total(proxy.metrics.requests),
      connections: await total(proxy.metrics.connections),
      failures: Object.fromEntries((await proxy.metrics.errors.get()).values.map((value) => [String(value.labels.code), value.value])),
      cpuMicros: cpuMicros(),
    }),
    close: () => proxy.close(),
  };
}

function cpuMicros(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

// ---------------------------------------------------------------------------------------
// The bench: managing children

/** Live children, so a signal or a failure can stop them all. */
const children = new ForkedChildren(fileURLToPath(import.meta.url), CHILD_TIMEOUT_MS);

const askStats = (child: Forked): Promise<ChildStats> => children.askStats<ChildStats>(child);

// ---------------------------------------------------------------------------------------
// The bench: measuring

/**
 * Bounds the requests of a rate measurement in time: one sweep a second destroys those
 * older than {@link REQUEST_TIMEOUT_MS}. A timer per request would weigh on the client,
 * and a heavier client makes direct slower and so flatters the proxy's ratio.
 */
class Watchdog implements Disposable {
  private readonly started = new Map<http.ClientRequest, number>();
  private readonly timer = setInterval(() => {
    const now = performance.now();
    for (const [req, at] of this.started) {
      if (now - at > REQUEST_TIMEOUT_MS) req.destroy(new Error(`${req.method} ${req.path}: no response within ${REQUEST_TIMEOUT_MS} ms`));
    }
  }, 1000);

  watch(req: http.ClientRequest): void {
    this.started.set(req, performance.now());
  }

  release(req: http.ClientRequest): void {
    this.started.delete(req);
  }

  [Symbol.dispose](): void {
    clearInterval(this.timer);
  }
}

/**
 * One GET; resolves with the body's length once it has all arrived with status 200.
 * Bounded by `watchdog`, or else by an idle timeout of {@link REQUEST_TIMEOUT_MS}.
 */
function get(agent: http.Agent, port: number, urlPath: string, watchdog?: Watchdog): Promise<number> {
  return new Promise((resolve, reject) => {
    // A response that breaks off ends in an 'error' (ECONNRESET, "aborted"), not in 'end'.
    const req = http.get({ host: HOST, port, path: urlPath, agent }, (res) => {
      let bytes = 0;
      res.on('data', (chunk: Buffer) => (bytes += chunk.length));
      res.once('error', fail);
      res.once('end', () => {
        watchdog?.release(req);
        if (res.statusCode === 200) resolve(bytes);
        else reject(new Error(`GET ${urlPath}: status ${String(res.statusCode)}`));
      });
    });
    const fail = (error: Error): void => {
      watchdog?.release(req);
      reject(error);
    };
    req.once('error', fail);
    if (watchdog !== undefined) watchdog.watch(req);
    else req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`GET ${urlPath}: no progress within ${REQUEST_TIMEOUT_MS} ms`)));
  });
}

interface Target {
  readonly name: string;
  readonly port: number;
  /** `keepAlive: true` or not: an http.Agent, or core's createAgent through the proxy. */
  agent(keepAlive: boolean, maxSockets: number): http.Agent;
  /** Requests the client completed, warm-ups included, to check the children's counts against. */
  completed: number;
  /** The processes serving it (the origin, the proxy), whose CPU time is measured. */
  readonly children: readonly Forked[];
}

interface RateResult {
  readonly requests: number;
  readonly errors: number;
  readonly seconds: number;
  readonly requestsPerSecond: number;
  readonly firstError: unknown;
  /** CPU time (user + system) per request of each process: `client`, `origin`, `proxy`. */
  readonly cpuMicrosPerRequest: Readonly<Record<string, number>>;
}

/** `concurrency` loops of `GET /small` on `agent` until the time is up, the cap reached, or too many fail. */
async function requestRate(target: Target, agent: http.Agent, seconds: number, concurrency: number): Promise<RateResult> {
  const cpuBefore = await cpuSnapshot(target);
  let started = 0;
  let requests = 0;
  let errors = 0;
  let firstError: unknown;
  using watchdog = new Watchdog();
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async (): Promise<void> => {
    while (performance.now() < deadline && started < MAX_REQUESTS && errors < MAX_ERRORS) {
      started++;
      try {
        const bytes = await get(agent, target.port, SMALL_PATH, watchdog);
        if (bytes !== SMALL_BYTES) throw new Error(`GET ${SMALL_PATH}: ${bytes} bytes instead of ${SMALL_BYTES}`);
        requests++;
        target.completed++;
      } catch (error) {
        errors++;
        firstError ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsed = (performance.now() - start) / 1000;
  const cpuAfter = await cpuSnapshot(target);
  const cpuMicrosPerRequest = Object.fromEntries(
    Object.entries(cpuAfter).map(([who, micros]) => [who, requests === 0 ? 0 : (micros - (cpuBefore[who] ?? 0)) / requests]),
  );
  return { requests, errors, seconds: elapsed, requestsPerSecond: requests / elapsed, firstError, cpuMicrosPerRequest };
}

/** CPU time used so far by the client (this process) and each child. */
async function cpuSnapshot(target: Target): Promise<Record<string, number>> {
  const snapshot: Record<string, number> = { client: cpuMicros() };
  for (const child of target.children) snapshot[child.name] = (await askStats(child)).cpuMicros;
  return snapshot;
}

interface TransferResult {
  readonly bytes: number;
  readonly seconds: number;
  readonly megabytesPerSecond: number;
}

/** One `GET /large` of `bytes` on a fresh keep-alive connection, timed from the request to the body's end. */
async function transfer(target: Target, bytes: number): Promise<TransferResult> {
  const agent = target.agent(true, 1);
  try {
    const start = performance.now();
    const received = await get(agent, target.port, `${LARGE_PATH}?bytes=${bytes}`);
    const seconds = (performance.now() - start) / 1000;
    if (received !== bytes) throw new Error(`GET ${LARGE_PATH}: ${received} bytes instead of ${bytes}`);
    target.completed++;
    return { bytes, seconds, megabytesPerSecond: bytes / seconds / 1e6 };
  } finally {
    agent.destroy();
  }
}

// ---------------------------------------------------------------------------------------
// The bench: configurations and report

interface Settings {
  readonly seconds: number;
  readonly concurrency: number;
  readonly mib: number;
  readonly json: string | undefined;
  readonly cpuProf: string | undefined;
}

interface ConfigurationResult {
  readonly name: string;
  readonly keepAlive: RateResult;
  readonly newConnection: RateResult;
  readonly transfer: TransferResult;
  /** What the origin and, through the proxy, the proxy counted; each equals the client's count. */
  readonly counted: Readonly<Record<string, number>>;
}

async function measure(target: Target, settings: Settings): Promise<Omit<ConfigurationResult, 'counted' | 'name'>> {
  const rate = async (keepAlive: boolean): Promise<RateResult> => {
    // Keep-alive: the measurement reuses the warm-up's connections. A new connection per
    // request: a non-keep-alive agent without a socket limit, so Node sends `Connection:
    // close` and the server closes after answering.
    const agent = target.agent(keepAlive, keepAlive ? settings.concurrency : Infinity);
    const runs: RateResult[] = [];
    try {
      runs.push(await requestRate(target, agent, WARMUP_SECONDS, settings.concurrency));
      runs.push(await requestRate(target, agent, settings.seconds, settings.concurrency));
    } finally {
      agent.destroy();
    }
    for (const run of runs) {
      if (run.errors > 0) {
        throw new Error(`${target.name}, ${keepAlive ? 'keep-alive' : 'new connections'}: ${run.errors} requests failed; the first: ${describeError(run.firstError)}`);
      }
    }
    return runs[1]!;
  };
  const keepAlive = await rate(true);
  const newConnection = await rate(false);
  const bytes = await transfer(target, settings.mib * 2 ** 20);
  return { keepAlive, newConnection, transfer: bytes };
}

/** Checks a child's count of requests against the client's, and that it saw no failure. */
function check(name: string, before: ChildStats, after: ChildStats, expected: number, problems: string[]): number {
  const requests = after.requests - before.requests;
  if (requests !== expected) problems.push(`${name} counted ${requests} requests, the client completed ${expected}`);
  for (const [code, count] of Object.entries(after.failures)) {
    const delta = count - (before.failures[code] ?? 0);
    if (delta > 0) problems.push(`${name} counted ${delta} failures (${code})`);
  }
  return requests;
}

async function runDirect(origin: Forked, settings: Settings): Promise<ConfigurationResult> {
  const target: Target = {
    name: 'direct',
    port: origin.port,
    agent: (keepAlive, maxSockets) => new http.Agent({ keepAlive, maxSockets }),
    completed: 0,
    children: [origin],
  };
  const before = await askStats(origin);
  const result = await measure(target, settings);
  const problems: string[] = [];
  const counted = { origin: check('origin', before, await askStats(origin), target.completed, problems) };
  if (problems.length > 0) throw new Error(`direct: ${problems.join('; ')}`);
  return { name: 'direct', ...result, counted };
}

async function runThroughProxy(origin: Forked, registry: string, settings: Settings): Promise<ConfigurationResult> {
  const execArgv = settings.cpuProf === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${settings.cpuProf}`];
  const proxy = await children.start('proxy', ['proxy', registry, String(origin.port)], execArgv);
  try {
    const target: Target = {
      name: 'through proxy',
      port: origin.port,
      agent: (keepAlive, maxSockets) => createAgent({ registry, keepAlive, maxSockets }),
      completed: 0,
      children: [origin, proxy],
    };
    const [originBefore, proxyBefore] = [await askStats(origin), await askStats(proxy)];
    const result = await measure(target, settings);
    const problems: string[] = [];
    const counted = {
      origin: check('origin', originBefore, await askStats(origin), target.completed, problems),
      proxy: check('proxy', proxyBefore, await askStats(proxy), target.completed, problems),
    };
    if (problems.length > 0) throw new Error(`through proxy: ${problems.join('; ')}`);
    return { name: 'through proxy', ...result, counted };
  } finally {
    await children.stop(proxy);
  }
}

function readSettings(): Settings {
  const { values } = parseArgs({
    options: { json: { type: 'string' }, 'cpu-prof': { type: 'string' } },
    strict: true,
    allowPositionals: false,
  });
  return {
    seconds: positiveFromEnv('BENCH_SECONDS', 3, false),
    concurrency: positiveFromEnv('BENCH_CONCURRENCY', 32, true),
    mib: positiveFromEnv('BENCH_MIB', 256, true),
    json: values.json,
    cpuProf: values['cpu-prof'] === undefined ? undefined : path.resolve(values['cpu-prof']),
  };
}

function printTable(results: readonly ConfigurationResult[]): void {
  const direct = results[0];
  const rows = [
    ['', 'keep-alive req/s', 'ratio', 'new-connection req/s', 'ratio', 'MB/s', 'ratio'],
    ...results.map((result) => [
      result.name,
      result.keepAlive.requestsPerSecond.toFixed(0),
      ratioText(result.keepAlive.requestsPerSecond, direct?.keepAlive.requestsPerSecond),
      result.newConnection.requestsPerSecond.toFixed(0),
      ratioText(result.newConnection.requestsPerSecond, direct?.newConnection.requestsPerSecond),
      result.transfer.megabytesPerSecond.toFixed(1),
      ratioText(result.transfer.megabytesPerSecond, direct?.transfer.megabytesPerSecond),
    ]),
  ];
  printRows(rows);
  // What each request cost each process: independent of how the processes shared the cores.
  console.log('');
  console.log('CPU time per request (µs, user + system):');
  const cpu = (result: RateResult, who: string): string => result.cpuMicrosPerRequest[who]?.toFixed(0) ?? '-';
  printRows([
    ['', 'keep-alive: client', 'origin', 'proxy', 'new connection: client', 'origin', 'proxy'],
    ...results.map((result) => [
      result.name,
      ...['client', 'origin', 'proxy'].map((who) => cpu(result.keepAlive, who)),
      ...['client', 'origin', 'proxy'].map((who) => cpu(result.newConnection, who)),
    ]),
  ]);
}

// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const settings = readSettings();
  const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-http-bench-'));
  const cleanUp = (): void => {
    children.signalAll('SIGTERM');
    fs.rmSync(registry, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    console.error(`http-bench: ${signal}, stopping`);
    cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  if (settings.cpuProf !== undefined) fs.mkdirSync(settings.cpuProf, { recursive: true });
  const profilesBefore = new Set(settings.cpuProf === undefined ? [] : fs.readdirSync(settings.cpuProf));
  try {
    const machine = { node: process.version, cpu: os.cpus()[0]?.model ?? 'unknown CPU', cores: os.cpus().length, date: new Date().toISOString() };
    console.log(
      `HTTP/1.1 on ${HOST}, embedded backend: ${settings.seconds} s per request-rate measurement, ${settings.concurrency} requests in flight, ` +
        `${SMALL_BYTES}-byte responses; ${settings.mib} MiB in one response${settings.cpuProf === undefined ? '' : '; the proxy runs under --cpu-prof'}`,
    );
    const origin = await children.start('origin', ['origin']);
    const results = [await runDirect(origin, settings), await runThroughProxy(origin, registry, settings)];
    for (const result of results) console.log(`  ${result.name}: counted ${Object.entries(result.counted).map(([who, n]) => `${who} ${n}`).join(', ')} requests, as the client completed`);
    console.log('');
    printTable(results);
    console.log('');
    const [direct, proxied] = results;
    const ratio = (proxied?.keepAlive.requestsPerSecond ?? 0) / (direct?.keepAlive.requestsPerSecond ?? 1);
    // When every process is CPU-bound on shared cores, req/s is cores / (CPU per request,
    // summed over the processes): this ratio is what the measured one tends to, and it
    // moves less when other work shares the machine.
    const cpuTotal = (result: ConfigurationResult | undefined): number => Object.values(result?.keepAlive.cpuMicrosPerRequest ?? {}).reduce((a, b) => a + b, 0);
    const cpuRatio = cpuTotal(direct) / cpuTotal(proxied);
    console.log(`target (issue #4): through the proxy >= 0.50 of direct keep-alive req/s with 1 KiB responses: ${ratio >= 0.5 ? 'met' : 'NOT met'} (${ratio.toFixed(3)}; from CPU time per request: ${cpuRatio.toFixed(3)})`);
    console.log(`Node ${machine.node}, ${machine.cpu}, ${machine.cores} cores, ${machine.date} (MB = 10^6 bytes)`);
    await children.stop(origin);
    if (settings.json !== undefined) {
      const report = { ...machine, settings: { ...settings, json: undefined }, results, keepAliveRatio: ratio, keepAliveCpuRatio: cpuRatio };
      fs.writeFileSync(settings.json, JSON.stringify(report, (_key, value: unknown) => (value instanceof Error ? describeError(value) : value), 2) + '\n');
      console.log(`wrote ${path.resolve(settings.json)}`);
    }
    if (settings.cpuProf !== undefined) {
      const written = fs.readdirSync(settings.cpuProf).filter((name) => name.endsWith('.cpuprofile') && !profilesBefore.has(name));
      if (written.length !== 1) throw new Error(`expected one new profile in ${settings.cpuProf}, found ${JSON.stringify(written)}`);
      console.log('');
      const file = path.join(settings.cpuProf, written[0]!);
      printProfileSummary(file, {
        title: `proxy profile ${file}`,
        // V8 samples on wall-clock ticks: a process preempted inside a write (which wakes its
        // peer) is charged to that write, so with more busy processes than cores the socket
        // writes look costlier than the CPU they take. `perf` measures on-CPU time.
        notes: ['  (wall-clock samples: time spent preempted inside a syscall counts as that syscall)'],
        top: 20,
        nativeLabel: 'native (V8 builtins, C++)',
        nodeLabel: 'node internals (net, http, streams, timers)',
      });
    }
  } finally {
    await children.stopAll();
    fs.rmSync(registry, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

switch (process.argv[2] ?? '') {
  case 'origin':
    serveForked('http-bench origin', startOrigin);
    break;
  case 'proxy': {
    const [registry = '', originPort = ''] = process.argv.slice(3);
    if (registry === '' || !Number.isInteger(Number(originPort))) {
      console.error(`usage: http-bench proxy REGISTRY ORIGIN_PORT, got ${process.argv.slice(3).join(' ')}`);
      process.exit(2);
    }
    serveForked('http-bench proxy', () => startProxy(registry, Number(originPort)));
    break;
  }
  default:
    main().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('http-bench failed:', error);
        process.exit(1);
      },
    );
}
