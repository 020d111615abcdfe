/**
 * What the TLS proxy costs: full TLS handshakes per second (a new connection per request,
 * a 2-byte response) and bytes per second on a 64 MiB response, **direct** (the client
 * straight to the origin), **spliced** (through the proxy, which reads the ClientHello and
 * forwards the encrypted bytes) and **bumped** (the proxy terminates TLS with a leaf from
 * its CA and re-encrypts to the origin), measured side by side in one run and reported as
 * absolute figures and as ratios to direct.
 *
 * The origin and each proxy (one splicing, one bumping) run in a child process of their
 * own (this script, forked with `origin …` or `proxy …`), the client in this one, on the
 * embedded backend: the client dials with core's `connect({ registry })`, each
 * configuration with a registry of its own, then TLS on that socket without session
 * resumption, so every connection is a full handshake. The configurations take turns, so
 * that a neighbour's load on a shared machine falls on all three alike. The origin's
 * certificate comes from a test CA and the proxy's bump CA from another, both made in a
 * temporary directory removed at the end. Every response is checked (status 200, the
 * expected bytes), and afterwards the origin's request count and each proxy's handshake
 * count must equal the client's: a bench that silently went around a proxy would say so.
 *
 * ```sh
 * pnpm --filter @coproxy/proxy-tls bench
 * BENCH_SECONDS=5 BENCH_CONCURRENCY=16 node bench/dist/tls-bench.js --json bench.json
 * node bench/dist/tls-bench.js --cpu-prof /tmp/prof   # also profiles the proxy processes
 * ```
 *
 * Environment: `BENCH_SECONDS` (3) of handshakes per configuration, `BENCH_CONCURRENCY`
 * (32) connections in flight. The 64 MiB transfer runs {@link TRANSFER_RUNS} times per
 * configuration, each on a new connection; the median counts. `--cpu-prof <dir>` runs the
 * proxy with `node --cpu-prof`, writes the profiles there and prints the functions with
 * the most self time (the figures of that run include the profiler's overhead).
 */
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from '@coproxy/core';
// The package by its own name: the bench measures the built package, as a user gets it.
import { CertificateAuthority, createTlsProxy, type Action } from '@coproxy/proxy-tls';
import { ForkedChildren, describeError, positiveFromEnv, printProfileSummary, printRows, ratioText, serveForked, type Forked, type ForkedService } from '@coproxy/bench-kit';

const HOST = '127.0.0.1';
/** The name the client asks for (SNI) and the origin's certificate is for. */
const SERVER_NAME = 'origin.bench.test';
const TINY_PATH = '/tiny';
const TINY_BODY = 'ok';
const LARGE_PATH = '/large';
const TRANSFER_BYTES = 64 * 2 ** 20;
const TRANSFER_RUNS = 7;
/** The handshake-rate measurement of each configuration is split into this many turns. */
const ROUNDS = 3;
const PROXY_ID = 'bench-tls';
/** Caps on one rate measurement, whatever BENCH_SECONDS says. */
const MAX_HANDSHAKES = 200_000;
/** A measurement stops early once this many connections have failed: the figures would be noise. */
const MAX_ERRORS = 100;
const WARMUP_SECONDS = 0.5;
const REQUEST_TIMEOUT_MS = 10_000;
const TRANSFER_TIMEOUT_MS = 60_000;
const CHILD_TIMEOUT_MS = 10_000;
const CHUNK_BYTES = 64 * 1024;

const CONFIGURATIONS = [
  { name: 'direct', mode: undefined },
  { name: 'splice', mode: 'splice' },
  { name: 'bump', mode: 'bump' },
] as const satisfies readonly { name: string; mode: Action | undefined }[];
type Configuration = (typeof CONFIGURATIONS)[number];

// ---------------------------------------------------------------------------------------
// What a child counts, asked for over IPC

interface ChildStats {
  /** Origin: requests answered. Proxy: decrypted exchanges (bump only). */
  readonly requests: number;
  /** Proxy: ClientHellos read, by the action taken. */
  readonly handshakes: Readonly<Partial<Record<Action, number>>>;
  /** Failures by code (TLS errors, resets, the proxy's failure events). */
  readonly failures: Readonly<Record<string, number>>;
  /** CPU time used so far, user + system. */
  readonly cpuMicros: number;
}

// ---------------------------------------------------------------------------------------
// Children: the origin and the proxy

function cpuMicros(): number {
  const { user, system } = process.cpuUsage();
  return user + system;
}

function count(record: Record<string, number>, key: string): void {
  record[key] = (record[key] ?? 0) + 1;
}

/** HTTPS with a leaf from the CA in `caDir`. `GET /tiny`: 2 bytes. `GET /large?bytes=N`: N bytes, streamed with backpressure. */
async function startOrigin(caDir: string): Promise<ForkedService<ChildStats>> {
  const context = await (await CertificateAuthority.open({ dir: caDir })).contextFor(SERVER_NAME);
  const chunk = Buffer.alloc(CHUNK_BYTES, 0x5a);
  let requests = 0;
  const failures: Record<string, number> = {};
  const server = https.createServer({ SNICallback: (_name, callback) => callback(null, context) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://origin');
    res.once('finish', () => requests++);
    if (url.pathname === TINY_PATH) return void res.writeHead(200, { 'content-length': TINY_BODY.length }).end(TINY_BODY);
    const bytes = Number(url.searchParams.get('bytes'));
    if (url.pathname !== LARGE_PATH || !Number.isSafeInteger(bytes) || bytes < 0) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': bytes });
    let remaining = bytes;
    const pump = (): void => {
      while (remaining > 0) {
        const size = Math.min(chunk.length, remaining);
        remaining -= size;
        if (!res.write(size === chunk.length ? chunk : chunk.subarray(0, size))) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
  // A client that goes away mid-handshake or mid-response is a failure the bench reports.
  server.on('tlsClientError', (error: NodeJS.ErrnoException) => count(failures, error.code ?? 'TLS_CLIENT_ERROR'));
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    count(failures, error.code ?? 'CLIENT_ERROR');
    socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: HOST, port: 0 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as { port: number }).port,
    stats: () => ({ requests, handshakes: {}, failures: { ...failures }, cpuMicros: cpuMicros() }),
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** The proxy with its defaults and a one-line policy: every handshake gets `mode`. */
async function startProxy(mode: Action, registry: string, originPort: number, caDir: string, originCa: string): Promise<ForkedService<ChildStats>> {
  const proxy = createTlsProxy({
    id: PROXY_ID,
    priority: 0,
    registry,
    match: { ports: [originPort] },
    policy: { default: mode },
    ca: { dir: caDir },
    originCa: fs.readFileSync(originCa),
  });
  const handshakes: Partial<Record<Action, number>> = {};
  const failures: Record<string, number> = {};
  let exchanges = 0;
  proxy.handshakes$.subscribe({
    next: (handshake) => (handshakes[handshake.action] = (handshakes[handshake.action] ?? 0) + 1),
    error: (error: unknown) => {
      console.error('tls-bench proxy: the proxy stopped:', error);
      process.exit(1);
    },
  });
  proxy.exchanges$.subscribe((exchange) => {
    exchanges++;
    if (exchange.error !== undefined) count(failures, exchange.error.code);
  });
  proxy.events$.subscribe((event) => {
    if (event.type === 'hello-rejected' || event.type === 'origin-rejected' || event.type === 'connection-failed') count(failures, `${event.type}: ${event.code}`);
    else if (event.type === 'rejected') count(failures, `rejected: ${event.error.code}`);
  });
  const listening = await proxy.listening();
  return {
    port: listening.port,
    stats: () => ({ requests: exchanges, handshakes: { ...handshakes }, failures: { ...failures }, cpuMicros: cpuMicros() }),
    close: () => proxy.close(),
  };
}

// ---------------------------------------------------------------------------------------
// The bench: managing children

/** Live children, so a signal or a failure can stop them all. */
const children = new ForkedChildren(fileURLToPath(import.meta.url), CHILD_TIMEOUT_MS);

const askStats = (child: Forked): Promise<ChildStats> => children.askStats<ChildStats>(child);

// ---------------------------------------------------------------------------------------
// The bench: measuring

interface Target {
  readonly name: string;
  readonly port: number;
  readonly registry: string;
  /**
   * Trusts one CA: the origin's (direct, splice) or the proxy's (bump). Made once: a `ca`
   * option to `tls.connect` would build a context, and parse the CA, on every connection.
   */
  readonly context: tls.SecureContext;
  /** The origin and, through the proxy, the proxy: their CPU time is sampled around each measurement. */
  readonly children: readonly Forked[];
  /** TLS connections the client completed a request on, so the children's counts can be checked against it. */
  completed: number;
}

/**
 * One request on a new TLS connection: core's `connect()`, a full handshake (no session
 * offered), `GET path` with `Connection: close`, and the whole response read to the end.
 * Resolves with the status and the body's length; bounded by `timeoutMs`.
 */
async function request(target: Target, urlPath: string, timeoutMs: number): Promise<{ status: number; bodyBytes: number; body: Buffer }> {
  const socket = await connect({ host: HOST, port: target.port, registry: target.registry, timeoutMs });
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket, servername: SERVER_NAME, secureContext: target.context, ALPNProtocols: ['http/1.1'] });
    const timer = setTimeout(() => secure.destroy(new Error(`GET ${urlPath}: no complete response within ${timeoutMs} ms`)), timeoutMs);
    // Only the head and a tiny body are kept; a large body is counted.
    let head: Buffer = Buffer.alloc(0);
    let headEnd = -1;
    let bodyBytes = 0;
    const kept: Buffer[] = [];
    secure.on('data', (chunk: Buffer) => {
      if (headEnd < 0) {
        head = Buffer.concat([head, chunk]);
        headEnd = head.indexOf('\r\n\r\n');
        if (headEnd < 0) {
          if (head.length > 16 * 1024) secure.destroy(new Error(`GET ${urlPath}: no end of the response head in 16 KiB`));
          return;
        }
        chunk = head.subarray(headEnd + 4);
        head = head.subarray(0, headEnd);
      }
      bodyBytes += chunk.length;
      if (bodyBytes <= 1024) kept.push(chunk);
    });
    secure.once('end', () => {
      const status = /^HTTP\/1\.1 (\d{3}) /.exec(head.toString('latin1'))?.[1];
      if (headEnd < 0 || status === undefined) secure.destroy(new Error(`GET ${urlPath}: no HTTP/1.1 response head`));
      else resolve({ status: Number(status), bodyBytes, body: Buffer.concat(kept) });
    });
    secure.on('error', reject);
    secure.once('close', () => {
      clearTimeout(timer);
      reject(new Error(`GET ${urlPath}: the connection closed before the response ended`)); // a no-op once resolved
    });
    secure.write(`GET ${urlPath} HTTP/1.1\r\nHost: ${SERVER_NAME}:${target.port}\r\nConnection: close\r\n\r\n`);
  });
}

interface RateSlice {
  readonly handshakes: number;
  readonly errors: number;
  readonly seconds: number;
  readonly firstError: unknown;
  /** CPU time used meanwhile, by process (client, origin, proxy), µs. */
  readonly cpu: Readonly<Record<string, number>>;
}

/** `concurrency` loops of one tiny request per new connection until the time is up, the cap reached, or too many fail. */
async function handshakeRate(target: Target, seconds: number, concurrency: number): Promise<RateSlice> {
  let started = 0;
  let handshakes = 0;
  let errors = 0;
  let firstError: unknown;
  const cpuBefore = await cpuSnapshot(target);
  const start = performance.now();
  const deadline = start + seconds * 1000;
  const loop = async (): Promise<void> => {
    while (performance.now() < deadline && started < MAX_HANDSHAKES && errors < MAX_ERRORS) {
      started++;
      try {
        const response = await request(target, TINY_PATH, REQUEST_TIMEOUT_MS);
        if (response.status !== 200 || response.body.toString('latin1') !== TINY_BODY) {
          throw new Error(`GET ${TINY_PATH}: ${response.status} ${JSON.stringify(response.body.toString('latin1'))}`);
        }
        handshakes++;
        target.completed++;
      } catch (error) {
        errors++;
        firstError ??= error;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const elapsed = (performance.now() - start) / 1000;
  return { handshakes, errors, seconds: elapsed, firstError, cpu: cpuSince(cpuBefore, await cpuSnapshot(target)) };
}

/** CPU time used so far by the client (this process) and each child. */
async function cpuSnapshot(target: Target): Promise<Record<string, number>> {
  const snapshot: Record<string, number> = { client: cpuMicros() };
  for (const child of target.children) snapshot[child.name] = (await askStats(child)).cpuMicros;
  return snapshot;
}

function cpuSince(before: Readonly<Record<string, number>>, after: Readonly<Record<string, number>>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).map(([who, micros]) => [who, micros - (before[who] ?? 0)]));
}

function addInto(total: Record<string, number>, more: Readonly<Record<string, number>>): void {
  for (const [key, value] of Object.entries(more)) total[key] = (total[key] ?? 0) + value;
}

/** `GET /large` of 64 MiB on a new connection, timed from the connect to the body's end. */
async function transferOnce(target: Target): Promise<{ megabytesPerSecond: number; cpu: Record<string, number> }> {
  const cpuBefore = await cpuSnapshot(target);
  const start = performance.now();
  const response = await request(target, `${LARGE_PATH}?bytes=${TRANSFER_BYTES}`, TRANSFER_TIMEOUT_MS);
  const seconds = (performance.now() - start) / 1000;
  if (response.status !== 200 || response.bodyBytes !== TRANSFER_BYTES) {
    throw new Error(`${target.name}: GET ${LARGE_PATH}: status ${response.status}, ${response.bodyBytes} bytes instead of ${TRANSFER_BYTES}`);
  }
  target.completed++;
  return { megabytesPerSecond: TRANSFER_BYTES / seconds / 1e6, cpu: cpuSince(cpuBefore, await cpuSnapshot(target)) };
}

// ---------------------------------------------------------------------------------------
// The bench: configurations and report

interface Settings {
  readonly seconds: number;
  readonly concurrency: number;
  readonly json: string | undefined;
  readonly cpuProf: string | undefined;
}

/** A configuration under measurement: what the client dials, and the figures so far. */
interface Lane {
  readonly configuration: Configuration;
  readonly target: Target;
  readonly proxy: Forked | undefined;
  handshakes: number;
  handshakeSeconds: number;
  readonly handshakeCpu: Record<string, number>;
  readonly transfers: number[];
  readonly transferCpu: Record<string, number>;
}

interface ConfigurationResult {
  readonly name: string;
  readonly handshakes: number;
  readonly handshakeSeconds: number;
  readonly handshakesPerSecond: number;
  /** CPU time per handshake, by process (client, origin, proxy), µs. */
  readonly cpuMicrosPerHandshake: Readonly<Record<string, number>>;
  /** Each 64 MiB run's MB/s, in order. */
  readonly transferRuns: readonly number[];
  /** The median run. */
  readonly megabytesPerSecond: number;
  /** CPU time per MB (10^6 bytes) over all runs, by process, µs. */
  readonly cpuMicrosPerMegabyte: Readonly<Record<string, number>>;
  /** Proxy: handshakes it took with the configuration's action, and (bump) exchanges; each equals the client's count. */
  readonly counted: Readonly<Record<string, number>>;
}

/**
 * Each configuration gets a registry of its own: empty for direct (the client still goes
 * through `connect()`), holding its proxy otherwise. So all three stay up at once and the
 * measurements can take turns.
 */
async function openLane(configuration: Configuration, origin: Forked, temp: string, originCa: string, settings: Settings): Promise<Lane> {
  const { mode, name } = configuration;
  const registry = path.join(temp, `registry-${name}`);
  fs.mkdirSync(registry, { mode: 0o700 });
  const proxyCaDir = path.join(temp, `proxy-ca-${name}`);
  const execArgv = settings.cpuProf === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${settings.cpuProf}`, `--cpu-prof-name=proxy-${name}.cpuprofile`];
  const proxy = mode === undefined ? undefined : await children.start('proxy', ['proxy', mode, registry, String(origin.port), proxyCaDir, originCa], execArgv);
  // The proxy's CA exists once the proxy is ready (it creates it on first use).
  const ca = fs.readFileSync(mode === 'bump' ? path.join(proxyCaDir, 'ca.crt') : originCa);
  const target: Target = {
    name,
    port: origin.port,
    registry,
    context: tls.createSecureContext({ ca }),
    children: proxy === undefined ? [origin] : [origin, proxy],
    completed: 0,
  };
  return { configuration, target, proxy, handshakes: 0, handshakeSeconds: 0, handshakeCpu: {}, transfers: [], transferCpu: {} };
}

/**
 * The configurations take turns ({@link ROUNDS} slices of the handshake rate each, then
 * one 64 MiB transfer each, {@link TRANSFER_RUNS} times), so a neighbour's load on a shared
 * machine falls on all of them alike rather than on whichever ran at that moment.
 */
async function measure(lanes: readonly Lane[], settings: Settings): Promise<void> {
  const check = (lane: Lane, slice: RateSlice): RateSlice => {
    if (slice.errors > 0) throw new Error(`${lane.target.name}: ${slice.errors} connections failed; the first: ${describeError(slice.firstError)}`);
    return slice;
  };
  for (const lane of lanes) check(lane, await handshakeRate(lane.target, WARMUP_SECONDS, settings.concurrency));
  for (let round = 0; round < ROUNDS; round++) {
    for (const lane of lanes) {
      const slice = check(lane, await handshakeRate(lane.target, settings.seconds / ROUNDS, settings.concurrency));
      lane.handshakes += slice.handshakes;
      lane.handshakeSeconds += slice.seconds;
      addInto(lane.handshakeCpu, slice.cpu);
    }
  }
  for (let run = 0; run < TRANSFER_RUNS; run++) {
    for (const lane of lanes) {
      const { megabytesPerSecond, cpu } = await transferOnce(lane.target);
      lane.transfers.push(megabytesPerSecond);
      addInto(lane.transferCpu, cpu);
    }
  }
}

/**
 * Every connection the client completed must have reached the origin once and, through a
 * proxy, been given the configuration's action once (and in bump, one decrypted exchange);
 * no child may have counted a failure. Retried briefly: a child may count a connection a
 * moment after the client has read its end.
 */
async function verify(lanes: readonly Lane[], origin: Forked): Promise<Map<Lane, Record<string, number>>> {
  let problems: string[] = [];
  const counted = new Map<Lane, Record<string, number>>();
  for (let attempt = 0; attempt < 20; attempt++) {
    problems = [];
    const expected = lanes.reduce((sum, lane) => sum + lane.target.completed, 0);
    const originStats = await askStats(origin);
    if (originStats.requests !== expected) problems.push(`the origin answered ${originStats.requests} requests, the client completed ${expected}`);
    checkFailures('origin', originStats, problems);
    for (const lane of lanes) {
      const { mode } = lane.configuration;
      const seen: Record<string, number> = {};
      counted.set(lane, seen);
      if (lane.proxy === undefined || mode === undefined) continue;
      const stats = await askStats(lane.proxy);
      const total = Object.values(stats.handshakes).reduce((a, b) => a + b, 0);
      seen[`proxy ${mode}`] = stats.handshakes[mode] ?? 0;
      if (seen[`proxy ${mode}`] !== lane.target.completed || total !== lane.target.completed) {
        problems.push(`the ${mode} proxy took ${seen[`proxy ${mode}`]} handshakes as ${mode}, ${total} in all, the client completed ${lane.target.completed}`);
      }
      if (mode === 'bump') {
        seen['proxy exchanges'] = stats.requests;
        if (stats.requests !== lane.target.completed) problems.push(`the bump proxy decrypted ${stats.requests} exchanges, the client completed ${lane.target.completed}`);
      }
      checkFailures(`the ${mode} proxy`, stats, problems);
    }
    if (problems.length === 0) return counted;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`the counts do not add up: ${problems.join('; ')}`);
}

function checkFailures(name: string, stats: ChildStats, problems: string[]): void {
  for (const [code, n] of Object.entries(stats.failures)) problems.push(`${name} counted ${n} failures (${code})`);
}

function resultOf(lane: Lane, counted: Readonly<Record<string, number>>): ConfigurationResult {
  const per = (cpu: Readonly<Record<string, number>>, n: number): Record<string, number> =>
    Object.fromEntries(Object.entries(cpu).map(([who, micros]) => [who, n === 0 ? 0 : micros / n]));
  const sorted = [...lane.transfers].sort((a, b) => a - b);
  return {
    name: lane.target.name,
    handshakes: lane.handshakes,
    handshakeSeconds: lane.handshakeSeconds,
    handshakesPerSecond: lane.handshakes / lane.handshakeSeconds,
    cpuMicrosPerHandshake: per(lane.handshakeCpu, lane.handshakes),
    transferRuns: lane.transfers,
    megabytesPerSecond: sorted[Math.floor(sorted.length / 2)] ?? 0,
    cpuMicrosPerMegabyte: per(lane.transferCpu, (lane.transfers.length * TRANSFER_BYTES) / 1e6),
    counted,
  };
}

function readSettings(): Settings {
  const args = process.argv.slice(2);
  const { values } = parseArgs({
    // `pnpm bench -- --json x` passes the `--` on: it is not an end of options here.
    args: args[0] === '--' ? args.slice(1) : args,
    options: { json: { type: 'string' }, 'cpu-prof': { type: 'string' } },
    strict: true,
    allowPositionals: false,
  });
  return {
    seconds: positiveFromEnv('BENCH_SECONDS', 3, false),
    concurrency: positiveFromEnv('BENCH_CONCURRENCY', 32, true),
    json: values.json,
    cpuProf: values['cpu-prof'] === undefined ? undefined : path.resolve(values['cpu-prof']),
  };
}

function printTable(results: readonly ConfigurationResult[]): void {
  const direct = results[0];
  printRows([
    ['', 'handshakes/s', 'ratio', 'MB/s (64 MiB)', 'ratio', 'runs MB/s'],
    ...results.map((result) => [
      result.name,
      result.handshakesPerSecond.toFixed(0),
      ratioText(result.handshakesPerSecond, direct?.handshakesPerSecond),
      result.megabytesPerSecond.toFixed(1),
      ratioText(result.megabytesPerSecond, direct?.megabytesPerSecond),
      result.transferRuns.map((run) => run.toFixed(0)).join(' '),
    ]),
  ]);
  // What each handshake and each MB cost each process: independent of how the processes
  // shared the cores.
  console.log('');
  console.log('CPU time (µs, user + system), per handshake and per MB transferred:');
  const who = ['client', 'origin', 'proxy'];
  const cpu = (figures: Readonly<Record<string, number>>, name: string): string => figures[name]?.toFixed(0) ?? '-';
  printRows([
    ['', ...who.map((name) => `handshake: ${name}`), ...who.map((name) => `MB: ${name}`)],
    ...results.map((result) => [
      result.name,
      ...who.map((name) => cpu(result.cpuMicrosPerHandshake, name)),
      ...who.map((name) => cpu(result.cpuMicrosPerMegabyte, name)),
    ]),
  ]);
}

// ---------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const settings = readSettings();
  const temp = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-bench-'));
  const cleanUp = (): void => {
    children.signalAll('SIGTERM');
    fs.rmSync(temp, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    console.error(`tls-bench: ${signal}, stopping`);
    cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  if (settings.cpuProf !== undefined) fs.mkdirSync(settings.cpuProf, { recursive: true });
  try {
    const machine = { node: process.version, cpu: os.cpus()[0]?.model ?? 'unknown CPU', cores: os.cpus().length, loadAverage: os.loadavg()[0], date: new Date().toISOString() };
    const originCaDir = path.join(temp, 'origin-ca');
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: 'CN=tls-bench origin CA' })).certPath;
    console.log(
      `TLS 1.3 on ${HOST}, embedded backend, ECDSA P-256 certificates: ${settings.seconds} s of handshakes per configuration (${ROUNDS} turns), ` +
        `${settings.concurrency} connections in flight, ${TINY_BODY.length}-byte responses; ${TRANSFER_RUNS} × 64 MiB responses per configuration` +
        `${settings.cpuProf === undefined ? '' : '; the proxies run under --cpu-prof'}`,
    );
    const origin = await children.start('origin', ['origin', originCaDir]);
    const lanes: Lane[] = [];
    for (const configuration of CONFIGURATIONS) lanes.push(await openLane(configuration, origin, temp, originCa, settings));
    await measure(lanes, settings);
    const counted = await verify(lanes, origin);
    const results = lanes.map((lane) => resultOf(lane, counted.get(lane) ?? {}));
    for (const lane of lanes) {
      const seen = Object.entries(counted.get(lane) ?? {}).map(([who, n]) => `, ${who} ${n}`).join('');
      console.log(`  ${lane.target.name}: client completed ${lane.target.completed}${seen}`);
    }
    console.log(`  origin: answered ${lanes.reduce((sum, lane) => sum + lane.target.completed, 0)}, as the client completed; no failures anywhere`);
    // Stopped before the report: a proxy under --cpu-prof writes its profile as it exits.
    await children.stopAll();
    console.log('');
    printTable(results);
    console.log('');
    const [direct, splice] = results;
    const spliceRatio = (splice?.megabytesPerSecond ?? 0) / (direct?.megabytesPerSecond ?? 1);
    console.log(`target (issue #5): splice >= 0.70 of direct MB/s on 64 MiB: ${spliceRatio >= 0.7 ? 'met' : 'NOT met'} (${spliceRatio.toFixed(2)})`);
    console.log(
      `Node ${machine.node}, ${machine.cpu}, ${machine.cores} cores, load average ${machine.loadAverage?.toFixed(2)} at the start, ${machine.date} (MB = 10^6 bytes)`,
    );
    if (settings.json !== undefined) {
      const report = { ...machine, settings: { ...settings, json: undefined }, transferBytes: TRANSFER_BYTES, results, spliceThroughputRatio: spliceRatio };
      fs.writeFileSync(settings.json, JSON.stringify(report, null, 2) + '\n');
      console.log(`wrote ${path.resolve(settings.json)}`);
    }
    if (settings.cpuProf !== undefined) {
      for (const configuration of CONFIGURATIONS) {
        if (configuration.mode === undefined) continue;
        console.log('');
        const file = path.join(settings.cpuProf, `proxy-${configuration.name}.cpuprofile`);
        printProfileSummary(file, {
          title: path.basename(file),
          top: 15,
          nativeLabel: 'native (V8 builtins, C++: TLS, syscalls)',
          nodeLabel: 'node internals (net, tls, http, streams)',
        });
      }
    }
  } finally {
    await children.stopAll();
    fs.rmSync(temp, { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

function usage(text: string): never {
  console.error(`usage: ${text}, got ${process.argv.slice(3).join(' ')}`);
  process.exit(2);
}

switch (process.argv[2] ?? '') {
  case 'origin': {
    const [caDir = ''] = process.argv.slice(3);
    if (caDir === '') usage('tls-bench origin CA_DIR');
    serveForked('tls-bench origin', () => startOrigin(caDir));
    break;
  }
  case 'proxy': {
    const [mode = '', registry = '', originPort = '', caDir = '', originCa = ''] = process.argv.slice(3);
    if ((mode !== 'splice' && mode !== 'bump') || registry === '' || !Number.isInteger(Number(originPort)) || caDir === '' || originCa === '') {
      usage('tls-bench proxy splice|bump REGISTRY ORIGIN_PORT CA_DIR ORIGIN_CA');
    }
    serveForked(`tls-bench proxy ${mode}`, () => startProxy(mode, registry, Number(originPort), caDir, originCa));
    break;
  }
  default:
    main().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error('tls-bench failed:', error);
        process.exit(1);
      },
    );
}
