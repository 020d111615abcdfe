#!/usr/bin/env node
/**
 * coproxy beside the proxies people use today (issue #7), on this machine, in one run:
 * direct; Squid intercept; mitmproxy transparent; HAProxy as a transparent TCP relay;
 * coproxy-http alone; coproxy-tls splicing alone; coproxy-tls and coproxy-http chained by
 * records on the nftables backend, and the same chain on the embedded backend; then HTTP/2
 * over TLS (issue #16): direct, through coproxy-tls's bump (h2 on both legs), through bump
 * then coproxy-http, and through mitmproxy, keep-alive by h2load and new connections by wrk.
 * Issue #17's records-off chain runs after the embedded chain, its soak last.
 *
 * As root, in a network namespace it creates (and removes, also on Ctrl-C or a failure,
 * killing every process in it): nginx as the origin, wrk as the load (each run bounded by
 * `-d` and `--timeout`), every proxy as operators run it (the peers as their own uid,
 * excluded from their own nft rule; the coproxy vendors through their CLIs, with no rule
 * written by hand). Installs nginx, wrk, squid, mitmproxy and haproxy from Debian's
 * packages when missing. Prints the tables and writes them to BENCHMARKS.md at the repo
 * root with the machine's description.
 *
 * ```sh
 * npx --yes pnpm@10.34.8 bench                                # from the repo root: builds, then runs this
 * node packages/testbed/bench/dist/compare.js --json bench.json
 * node packages/testbed/bench/dist/compare.js --only direct,coproxy-http --cpu-prof /tmp/prof
 * ```
 *
 * Options: `--json FILE` (the full report), `--markdown FILE` (default: BENCHMARKS.md at
 * the repo root, written only by a run of every configuration), `--seconds N` (5, per
 * load run), `--only KEYS` (configurations: direct, squid, mitmproxy, haproxy,
 * coproxy-http, coproxy-tls, chain-nftables, chain-embedded, chain-records-off, h2-direct,
 * h2-bump, h2-chain, h2-mitmproxy, soak), `--cpu-prof DIR` (runs the
 * coproxy vendors under `node --cpu-prof` and summarizes their self time),
 * `--probe-requests N` (2000; the latency probe's requests per HTTP/HTTPS row, 0: none),
 * `--soak-flows N` (100000; flows per soak round), `--noise-limit SHARE` (0.15; the share
 * of the machine other work may take before a run waits for quiet or is repeated; 1 for a
 * quick check on a busy machine: no waiting, no repeat).
 *
 * Issue #17 adds: proxy CPU per new connection (every row), a latency probe (time to first
 * byte, one new connection at a time), the nftables chain with records against the same
 * two vendors chained as peers are (records off, uid rules by hand), each vendor's peak RSS
 * over its whole configuration, and a soak (rounds of short flows through the chain, RSS
 * and V8 heap after each).
 *
 * Not a test: nothing is asserted on timings. Exit code 0 when every configuration ran and
 * every proxy was proven in the path, 1 otherwise (or without root), 2 for a usage error.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { readMemory } from '@coproxy/bench-kit';
import { type BenchContext, type Configuration, type ProxyCounts, type RowSpec, type Started, configurations, rowTarget } from './configurations.js';
import { summarizeProfiles } from './cpu-profile.js';
import { installMissing } from './install.js';
import {
  CLOCK_TICKS,
  type IdleSpec,
  type LoadResult,
  type LoadSpec,
  type ProbeResult,
  foreignLoad,
  openIdle,
  processTicks,
  runH2load,
  runLatencyProbe,
  runNodeLoad,
  runWrk,
  writeLimitedWrkScript,
  writeWrkScript,
} from './measure.js';
import { Namespace, ORIGIN_ADDRESS } from './namespace.js';
import { LARGE_PATH, type Origin, type OriginCounts, SMALL_BYTES, SMALL_PATH, startOrigin } from './nginx-origin.js';
import { describeMachine, perConnection, renderMarkdown, targets, targets17 } from './report.js';
import type { IdleMemory, MeasuredRun, ProcessPeak, ProfileSummary, Report, RowResult, RunKind, Settings, SoakReading, SoakResult, SoakRound } from './results.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(here, '../../../..');
/**
 * No configuration starts once the run has taken this long: the whole run stays under 18
 * minutes. It took about 8.5 before issue #17; its latency probe (at most 10 rows ×
 * {@link PROBE_SECONDS} before it), records-off chain (about 1 minute) and soak (last: at
 * most 3 × {@link SOAK_ROUND_SECONDS} and 15 s) add at most 6.
 */
const BUDGET_MS = 13 * 60_000;
/** Past this, a disturbed run is neither waited for nor repeated. */
const REPEAT_BUDGET_MS = 12 * 60_000;
/** The latency probe: at most this many requests per row, one connection at a time, within this many seconds. */
const PROBE_REQUESTS = 2000;
const PROBE_SECONDS = 5;
/** The soak: rounds of this many short flows each (wrk, `Connection: close`), each bounded in time. */
const SOAK_FLOWS = 100_000;
const SOAK_ROUNDS = 3;
/** 100,000 flows in 75 s needs 1,333 flows/s: the chain made 1,469 new connections/s on a quiet machine (issue #17); slower, the round stops at 75 s and says so. */
const SOAK_ROUND_SECONDS = 75;
const WARMUP_SECONDS = 1;
/** The nice value of the bench's scheduling group while it runs; see {@link prioritize}. */
const BENCH_NICE = -10;
const IDLE_TIMEOUT_MS = 30_000;
const SETTLE_MS = 750;
/** Before each run: a window this long must be quiet (see ConfigurationRun.quiet). */
const QUIET_WINDOW_MS = 750;
/** The longest wait for quiet before one run, and over the whole bench. */
const QUIET_MAX_MS = 20_000;
const QUIET_BUDGET_MS = 120_000;
const quietBudget = { spentMs: 0 };
const IDLE_CONCURRENCY = 50;
/** h2 rows, keep-alive: h2load's connections and concurrent streams on each. */
const H2_CONNECTIONS = 4;
const H2_STREAMS = 32;
/** Per-namespace settings: the new-connection runs open tens of thousands of connections per row. */
const SYSCTLS = {
  'net.ipv4.ip_local_port_range': '1024 65000',
  'net.ipv4.tcp_tw_reuse': '1',
  // The vendors set it themselves when they can; the records-off chain's run as their own uids, which cannot write /proc/sys.
  'net.ipv4.tcp_fwmark_accept': '1',
} as const;

interface Options {
  readonly json: string | undefined;
  readonly markdown: string | undefined;
  readonly only: readonly string[] | undefined;
  readonly settings: Settings;
}

function parseOptions(): Options {
  // `pnpm bench -- --json x` hands the script a literal `--` first: not an argument.
  const args = process.argv.slice(2);
  const { values } = parseArgs({
    args: args[0] === '--' ? args.slice(1) : args,
    options: {
      json: { type: 'string' },
      markdown: { type: 'string' },
      seconds: { type: 'string', default: '5' },
      only: { type: 'string' },
      'cpu-prof': { type: 'string' },
      'probe-requests': { type: 'string', default: String(PROBE_REQUESTS) },
      'soak-flows': { type: 'string', default: String(SOAK_FLOWS) },
      'noise-limit': { type: 'string', default: '0.15' },
    },
    strict: true,
    allowPositionals: false,
  });
  const seconds = Number(values.seconds);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 30) throw new UsageError(`--seconds: an integer in 1..30, got ${values.seconds}`);
  const probeRequests = Number(values['probe-requests']);
  if (!Number.isInteger(probeRequests) || probeRequests < 0 || probeRequests > 100_000) throw new UsageError(`--probe-requests: an integer in 0..100000, got ${values['probe-requests']}`);
  const soakFlows = Number(values['soak-flows']);
  if (!Number.isInteger(soakFlows) || soakFlows < 1 || soakFlows > 1_000_000) throw new UsageError(`--soak-flows: an integer in 1..1000000, got ${values['soak-flows']}`);
  const noiseLimit = Number(values['noise-limit']);
  if (!(noiseLimit > 0 && noiseLimit <= 1)) throw new UsageError(`--noise-limit: a share in (0, 1], got ${values['noise-limit']}`);
  const known = configurations().map((c) => c.key);
  const only = values.only?.split(',').map((k) => k.trim());
  for (const key of only ?? []) if (!known.includes(key)) throw new UsageError(`--only: '${key}' is not a configuration (${known.join(', ')})`);
  // pnpm runs the script in the package's directory; a relative path means the caller's.
  const fromCaller = (file: string | undefined): string | undefined => (file === undefined ? undefined : path.resolve(process.env.INIT_CWD ?? process.cwd(), file));
  return {
    json: fromCaller(values.json),
    markdown: fromCaller(values.markdown),
    only,
    settings: {
      seconds,
      connections: 64,
      bulkConnections: 1,
      idleConnections: 1000,
      noiseLimit,
      kernelSplice: process.env.COPROXY_KERNEL_SPLICE !== '0',
      cpuProf: fromCaller(values['cpu-prof']),
      probe: { requests: probeRequests, seconds: PROBE_SECONDS },
      soak: { flows: soakFlows, rounds: SOAK_ROUNDS, roundSeconds: SOAK_ROUND_SECONDS, connections: 64 },
    },
  };
}

class UsageError extends Error {
  override readonly name = 'UsageError';
}

const log = (line: string): void => void process.stdout.write(`${line}\n`);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function main(): Promise<number> {
  let options: Options;
  try {
    options = parseOptions();
  } catch (error) {
    process.stderr.write(`compare: ${(error as Error).message}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    log('compare: needs root (a network namespace, nft rules, proxies started as their own uids, packages from Debian); nothing was done.');
    return 1;
  }
  const installed = installMissing(log);
  if (installed.length > 0) log(`installed: ${installed.join(', ')}`);

  const began = Date.now();
  const restorePriority = prioritize(BENCH_NICE);
  let ns: Namespace | undefined;
  let dir: string | undefined;
  const cleanUp = (): void => {
    try {
      ns?.destroy();
    } finally {
      if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
      restorePriority();
    }
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`compare: ${signal}: stopping every process in ${ns?.name ?? 'the namespace'} and removing it\n`);
    cleanUp();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-compare-'));
    // The peers run as their own uids and nginx's worker as its own: they must reach their files.
    fs.chmodSync(dir, 0o755);
    const registry = path.join(dir, 'registry');
    fs.mkdirSync(registry, { mode: 0o700 });
    ns = Namespace.create(`coproxy-compare-${process.pid}`, SYSCTLS);
    const { settings } = options;
    if (settings.cpuProf !== undefined) fs.mkdirSync(settings.cpuProf, { recursive: true });
    const ctx: BenchContext = { ns, dir, registry, cpuProfDir: settings.cpuProf };
    log(`namespace ${ns.name}; origin nginx on ${ORIGIN_ADDRESS}:80 and :443; ${settings.seconds} s per run`);
    const origin = await startOrigin(ns, dir);
    const script = writeWrkScript(dir);
    const rows: RowResult[] = [];
    const skipped: string[] = [];
    const failed: string[] = [];
    const notes: string[] = [];
    const profiles: ProfileSummary[] = [];
    let soak: SoakResult | undefined;
    const selected = configurations().filter((c) => options.only === undefined || options.only.includes(c.key));
    for (const configuration of selected) {
      if (Date.now() - began > BUDGET_MS) {
        skipped.push(configuration.key);
        continue;
      }
      log(`\n== ${configuration.label}: ${configuration.setup}`);
      const runner = new ConfigurationRun(ctx, configuration, origin, script, settings, began);
      try {
        if (configuration.soak === true) soak = await runner.soak();
        else rows.push(...(await runner.run()));
      } catch (error) {
        // One configuration failing (a peer that will not start) leaves the others worth running.
        const message = error instanceof Error ? error.message : String(error);
        log(`   FAILED: ${message}`);
        failed.push(`${configuration.key}: ${message}`);
      }
      notes.push(...runner.notes);
      if (settings.cpuProf !== undefined) profiles.push(...collectProfiles(settings.cpuProf, configuration));
    }
    await origin.stop();
    notes.push(...failed.map((f) => `failed: ${f}`));
    const report: Report = { machine: describeMachine(), settings, rows, skipped, profiles, durationSeconds: (Date.now() - began) / 1000, notes, ...(soak !== undefined && { soak }) };
    const markdown = renderMarkdown(report, 'npx --yes pnpm@10.34.8 bench');
    log(`\n${markdown}`);
    const complete = options.only === undefined && skipped.length === 0 && failed.length === 0;
    const markdownFile = options.markdown ?? (complete ? path.join(REPO_ROOT, 'BENCHMARKS.md') : undefined);
    if (markdownFile !== undefined) {
      fs.writeFileSync(markdownFile, `${markdown}\n${NOTES_MARKER}\n${handWrittenNotes(markdownFile)}`);
      log(`wrote ${markdownFile}`);
    } else {
      log('BENCHMARKS.md not written: not every configuration ran (give --markdown FILE to write this one)');
    }
    if (options.json !== undefined) {
      fs.writeFileSync(options.json, `${JSON.stringify({ ...report, targets: targets(report), targets17: targets17(report) }, null, 2)}\n`);
      log(`wrote ${path.resolve(options.json)}`);
    }
    return complete && rows.every((r) => r.inPath) ? 0 : 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cleanUp();
  }
}

/** Below this line BENCHMARKS.md is written by people (analysis, profiles): the bench keeps it. */
const NOTES_MARKER = '<!-- Notes below this line are written by hand; the bench keeps them when it rewrites the file. -->';

function handWrittenNotes(file: string): string {
  if (!fs.existsSync(file)) return '';
  const text = fs.readFileSync(file, 'utf8');
  const at = text.indexOf(NOTES_MARKER);
  return at < 0 ? '' : text.slice(at + NOTES_MARKER.length).replace(/^\n/, '');
}

/** The vendors' profiles of one configuration, summarized and moved aside (named after it) so the next one starts clean. */
function collectProfiles(dir: string, configuration: Configuration): ProfileSummary[] {
  return ['compare-tls', 'compare-http'].flatMap((id) =>
    summarizeProfiles(path.join(dir, id), `${id} (${configuration.label})`).map((summary) => {
      const file = path.join(dir, `${configuration.key}-${id}-${path.basename(summary.file)}`);
      fs.renameSync(summary.file, file);
      return { ...summary, file };
    }),
  );
}

/**
 * Puts the bench's scheduling group ahead of other work on a shared machine, and returns
 * how to undo it. With autogroup scheduling (the default), CPU time is shared between
 * sessions first, and a process's nice value only counts within its session: the
 * session's own nice (/proc/self/autogroup) is what gives the bench, its namespace's
 * processes (which inherit the session) and nothing else, precedence. Every configuration
 * runs with the same precedence; the CPU other work still gets is measured ("other load").
 */
function prioritize(nice: number): () => void {
  const file = '/proc/self/autogroup';
  let previous: string | undefined;
  try {
    previous = /nice (-?\d+)/.exec(fs.readFileSync(file, 'utf8'))?.[1];
    fs.writeFileSync(file, String(nice));
  } catch (error) {
    log(`note: could not raise the bench's scheduling priority (${(error as Error).message}); other work on the machine will weigh more`);
    return () => undefined;
  }
  let restored = false;
  return () => {
    if (restored || previous === undefined) return;
    restored = true;
    fs.writeFileSync(file, previous);
  };
}

interface Snapshot {
  readonly origin: OriginCounts;
  readonly proxies: readonly ProxyCounts[];
  /** Connections the operator's redirect rule matched (its nft counter). */
  readonly redirected: number | undefined;
}

/** One configuration: start it, measure each of its rows, stop it, and check it left nothing behind. */
class ConfigurationRun {
  readonly notes: string[] = [];
  private started: Started | undefined;

  constructor(
    private readonly ctx: BenchContext,
    private readonly configuration: Configuration,
    private readonly origin: Origin,
    private readonly script: string,
    private readonly settings: Settings,
    private readonly began: number,
  ) {}

  async run(): Promise<RowResult[]> {
    const { ns } = this.ctx;
    const leftover = tableNames(this.ctx.ns);
    if (leftover.length > 0) throw new Error(`tables left in the namespace before ${this.configuration.key}: ${leftover.join(', ')}`);
    const started = await this.configuration.start(this.ctx);
    this.started = started;
    try {
      const rules = countRules(ns);
      log(`   rules: ${rules.byHand} by hand, ${rules.installed} installed by coproxy; processes: ${started.proxies.map((p) => `${p.name} (pid ${p.pid})`).join(', ') || 'none'}`);
      const memory = new Map<string, IdleMemory>();
      for (const row of this.configuration.rows) await this.probe(row);
      // Once per configuration, on its first row, before any load: a second measurement in
      // the same processes would find the memory pools the first one grew, and say little.
      // (Not for the h2 rows: their question is requests and handshakes per second, and the
      // HTTP/1.1 idle client would say nothing about HTTP/2.)
      const first = this.configuration.rows[0]!;
      if (started.proxies.length > 0 && first.section !== 'h2') memory.set(first.key, await this.idle(first));
      const results: RowResult[] = [];
      for (const row of this.configuration.rows) {
        const tool = row.section === 'node' ? 'node' : row.section === 'h2' ? 'h2load' : 'wrk';
        await this.load(row, 'keep-alive', WARMUP_SECONDS);
        await sleep(SETTLE_MS); // the warm-up's last requests must not land in the first run's counts
        const runs: MeasuredRun[] = [];
        // h2 rows: h2load keep-alive and wrk's new connections (the handshake cost); the 64 MiB run is the HTTPS rows' question.
        const kinds = row.section === 'h2' ? (['keep-alive', 'close'] as const) : (['keep-alive', 'close', 'bulk'] as const);
        for (const kind of kinds) runs.push(await this.measure(row, kind));
        const latency = await this.latencyProbe(row);
        const problems = [...runs.flatMap((r) => r.problems), ...(memory.get(row.key)?.problems ?? []), ...(latency !== undefined && latency.errors > 0 ? [`latency probe: ${latency.errors} failed (${latency.firstError ?? ''})`] : [])];
        results.push({
          key: row.key,
          label: row.label,
          section: row.section,
          configuration: this.configuration.key,
          setup: this.configuration.setup,
          tool,
          runs,
          memory: memory.get(row.key),
          rules: { ...rules, uidExclusions: started.uidExclusions },
          countSources: started.proxies.map((p) => `${p.name}: ${p.countSource}`).concat(started.operatorTable === undefined ? [] : ['kernel: counter on the redirect rule']),
          inPath: problems.length === 0,
          ...(latency !== undefined && { latency }),
        });
      }
      // VmHWM now: the peak over the whole configuration, its idle connections and every load run of every row.
      const peak: ProcessPeak[] = this.proxies.map((p) => ({ name: p.name, pid: p.pid, hwmKiB: readMemory(p.pid).hwmKiB }));
      if (peak.length > 0) log(`   peak RSS over the configuration: ${peak.map((p) => `${p.name} ${(p.hwmKiB / 1024).toFixed(1)} MiB`).join(', ')}`);
      return peak.length === 0 ? results : results.map((r) => ({ ...r, peak }));
    } finally {
      for (const proxy of [...started.proxies].reverse()) await proxy.stop();
      if (started.operatorTable !== undefined) ns.exec('nft', ['delete', 'table', 'inet', started.operatorTable]);
      const left = tableNames(ns);
      if (left.length > 0) {
        this.notes.push(`${this.configuration.key}: tables still there after its proxies stopped: ${left.join(', ')} (removed by the bench)`);
        ns.exec('nft', ['flush', 'ruleset']);
      }
    }
  }

  /** The latency probe on an HTTP or HTTPS row (wrk's sections): one new connection at a time, time to first byte. */
  private async latencyProbe(row: RowSpec): Promise<ProbeResult | undefined> {
    const { requests, seconds } = this.settings.probe;
    if ((row.section !== 'http' && row.section !== 'https') || requests === 0) return undefined;
    await this.quiet();
    const { scheme, port } = rowTarget(row);
    const result = await runLatencyProbe(this.ctx.ns, { host: ORIGIN_ADDRESS, port, tls: scheme === 'https', path: SMALL_PATH, count: requests, seconds, timeoutMs: 5000 });
    log(
      `   ${row.label} [${row.section}] latency probe: ${result.requests} requests one at a time in ${result.seconds.toFixed(1)} s, ` +
        `time to first byte p50 ${result.p50Ms.toFixed(3)} ms, p99 ${result.p99Ms.toFixed(3)} ms, errors ${result.errors}, other load ${(result.foreignCpu * 100).toFixed(0)}%`,
    );
    return result;
  }

  /**
   * The soak: after a probe request, rounds of short flows (wrk, `Connection: close`, each
   * round bounded in count and time), each vendor's RSS and V8 heap read after each round
   * once its connections have closed.
   */
  async soak(): Promise<SoakResult> {
    const row = this.configuration.rows[0]!;
    const { flows, rounds, roundSeconds, connections } = this.settings.soak;
    const started = await this.configuration.start(this.ctx);
    this.started = started;
    try {
      await this.probe(row);
      const read = async (): Promise<SoakReading[]> => {
        await sleep(2 * SETTLE_MS);
        const counts = await Promise.all(this.proxies.map((p) => p.counts()));
        return this.proxies.map((p, i) => ({ name: p.name, rssKiB: readMemory(p.pid).rssKiB, heapUsedBytes: counts[i]!.heapUsedBytes }));
      };
      const show = (readings: readonly SoakReading[]): string =>
        readings.map((r) => `${r.name} RSS ${(r.rssKiB / 1024).toFixed(1)} MiB, heap ${r.heapUsedBytes === undefined ? '–' : `${(r.heapUsedBytes / 2 ** 20).toFixed(1)} MiB`}`).join('; ');
      const before = await read();
      log(`   before: ${show(before)}`);
      const { script, doneFile } = writeLimitedWrkScript(this.ctx.dir, flows);
      const { scheme } = rowTarget(row);
      const results: SoakRound[] = [];
      let stopped: string | undefined;
      for (let round = 1; round <= rounds && stopped === undefined; round++) {
        try {
          await this.quiet();
          const snapBefore = await this.snapshot();
          const result = await runWrk(this.ctx.ns, { url: `${scheme}://${ORIGIN_ADDRESS}${SMALL_PATH}`, seconds: roundSeconds, connections, timeoutSeconds: 5, close: true }, script, doneFile);
          await sleep(SETTLE_MS);
          const { problems } = this.check(row, 'close', result, snapBefore, await this.snapshot());
          const readings = await read();
          if (result.requests < flows) problems.push(`${result.requests} of ${flows} flows within ${roundSeconds} s`);
          if (result.errors > 0) problems.push(`${result.errors} failed (${result.errorDetail})`);
          results.push({ flows: result.requests, errors: result.errors, seconds: result.seconds, readings, problems });
          log(`   round ${round}: ${result.requests} flows in ${result.seconds.toFixed(1)} s, errors ${result.errors}; ${show(readings)}${problems.length > 0 ? `; PROBLEMS: ${problems.join('; ')}` : ''}`);
        } catch (error) {
          // A vendor that exits mid-soak (out of memory, say) is the soak's finding: the rounds so far are kept.
          const exited = this.proxies.filter((p) => !fs.existsSync(`/proc/${p.pid}`)).map((p) => `${p.name} (pid ${p.pid}) exited`);
          stopped = `round ${round}: ${[...exited, error instanceof Error ? error.message : String(error)].join('; ')}`;
          log(`   STOPPED: ${stopped}`);
        }
      }
      return { label: this.configuration.label, setup: this.configuration.setup, flowsPerRound: flows, rounds: results, before, ...(stopped !== undefined && { stopped }) };
    } finally {
      for (const proxy of [...started.proxies].reverse()) await proxy.stop();
    }
  }

  private get proxies(): Started['proxies'] {
    return this.started?.proxies ?? [];
  }

  /** One request through the configuration before anything is measured: it must reach the origin. */
  private async probe(row: RowSpec): Promise<void> {
    const result = await this.load(row, 'keep-alive', 1, 1);
    if (result.requests === 0 || result.errors > 0) throw new Error(`${row.label}: the probe failed (${result.errorDetail || 'no response'})`);
  }

  private async snapshot(): Promise<Snapshot> {
    const origin = this.origin.counts();
    const proxies = await Promise.all(this.proxies.map((p) => p.counts()));
    const table = this.started?.operatorTable;
    return { origin, proxies, redirected: table === undefined ? undefined : redirectCounter(this.ctx.ns, table) };
  }

  /** One load run, by wrk, h2load (h2 rows, keep-alive) or (Node-client rows) by the Node client. */
  private load(row: RowSpec, kind: RunKind, seconds: number, connections?: number): Promise<LoadResult> {
    const { scheme, port } = rowTarget(row);
    const file = kind === 'bulk' ? LARGE_PATH : SMALL_PATH;
    const conns = connections ?? (kind === 'bulk' ? this.settings.bulkConnections : this.settings.connections);
    const timeoutSeconds = kind === 'bulk' ? 15 : 5;
    if (row.section === 'node') {
      return runNodeLoad(this.ctx.ns, {
        host: ORIGIN_ADDRESS,
        port,
        ...(this.started?.embedded === true && { registry: this.ctx.registry }),
        mode: kind,
        path: file,
        seconds,
        concurrency: conns,
        timeoutMs: timeoutSeconds * 1000,
      });
    }
    if (row.section === 'h2' && kind === 'keep-alive') {
      return runH2load(this.ctx.ns, { url: `https://${ORIGIN_ADDRESS}:${port}${file}`, seconds, connections: Math.min(conns, H2_CONNECTIONS), streams: connections === undefined ? H2_STREAMS : 1 });
    }
    const host = row.section === 'h2' ? `${ORIGIN_ADDRESS}:${port}` : ORIGIN_ADDRESS;
    const spec: LoadSpec = { url: `${scheme}://${host}${file}`, seconds, connections: conns, timeoutSeconds, close: kind === 'close' };
    return runWrk(this.ctx.ns, spec, this.script);
  }

  /** A measured run, with the counters read around it; repeated once when other work disturbed it. */
  private async measure(row: RowSpec, kind: RunKind): Promise<MeasuredRun> {
    let best: MeasuredRun | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      await this.quiet();
      const before = await this.snapshot();
      const ticksBefore = this.proxies.map((p) => processTicks(p.pid));
      const result = await this.load(row, kind, this.settings.seconds);
      const ticks = this.proxies.reduce((sum, p, i) => sum + processTicks(p.pid) - ticksBefore[i]!, 0);
      const proxyCpuUsPerRequest = this.proxies.length === 0 || result.requests === 0 ? undefined : ((ticks / CLOCK_TICKS) * 1e6) / result.requests;
      // Requests cut by the deadline may still be on their way through a proxy to the
      // origin: let them land in this run's counts, not the next one's.
      await sleep(SETTLE_MS);
      const after = await this.snapshot();
      const { evidence, problems } = this.check(row, kind, result, before, after);
      const measured: MeasuredRun = { kind, result, repeated: attempt > 0, evidence, problems, proxyCpuUsPerRequest };
      if (best === undefined || result.foreignCpu < best.result.foreignCpu) best = measured;
      log(
        `   ${row.label} [${row.section}] ${kind}: ${result.requestsPerSecond.toFixed(0)} req/s, ${result.megabytesPerSecond.toFixed(1)} MB/s, ` +
          `p50 ${result.p50Ms.toFixed(2)} ms, p99 ${result.p99Ms.toFixed(2)} ms, errors ${result.errors}, ` +
          `${proxyCpuUsPerRequest === undefined ? '' : `proxy CPU ${proxyCpuUsPerRequest.toFixed(0)} µs/req, `}other load ${(result.foreignCpu * 100).toFixed(0)}%` +
          `${problems.length > 0 ? `; PATH CHECK: ${problems.join('; ')}` : ''}`,
      );
      if (result.foreignCpu <= this.settings.noiseLimit || Date.now() - this.began > REPEAT_BUDGET_MS) break;
      log('   (other work on the machine took more than its share: once more)');
    }
    return best!;
  }

  /**
   * Waits until other work on the machine lets it be: a {@link QUIET_WINDOW_MS} window in
   * which processes outside the bench used at most the noise limit. Bounded per run
   * ({@link QUIET_MAX_MS}) and over the whole bench ({@link quietBudget}); past either, the
   * run goes ahead and its "other load" says how disturbed it was.
   */
  private async quiet(): Promise<void> {
    const start = Date.now();
    for (;;) {
      const foreign = await foreignLoad(this.ctx.ns, QUIET_WINDOW_MS);
      const waited = Date.now() - start;
      if (foreign <= this.settings.noiseLimit) {
        if (waited > 2 * QUIET_WINDOW_MS) log(`   (waited ${(waited / 1000).toFixed(1)} s for other work on the machine to calm down)`);
        quietBudget.spentMs += Math.max(0, waited - QUIET_WINDOW_MS);
        return;
      }
      if (waited > QUIET_MAX_MS || quietBudget.spentMs + waited > QUIET_BUDGET_MS || Date.now() - this.began > REPEAT_BUDGET_MS) {
        log(`   (other work takes ${(foreign * 100).toFixed(0)}% of the machine; not waiting longer)`);
        quietBudget.spentMs += waited;
        return;
      }
    }
  }

  /**
   * Every counter must agree with the load generator: the origin answered each response
   * the client counted, and each proxy accepted each connection (new-connection runs) or
   * parsed each request. Upper bounds allow the connections still open when the run was
   * cut and the failed ones; a count far beyond would mean a loop.
   */
  private check(row: RowSpec, kind: RunKind, result: LoadResult, before: Snapshot, after: Snapshot): { evidence: string; problems: string[] } {
    const n = result.requests;
    // Requests in flight when the run was cut: one per connection, or h2load's streams.
    const connections = kind === 'bulk' ? this.settings.bulkConnections : result.tool === 'h2load' ? H2_CONNECTIONS * H2_STREAMS : this.settings.connections;
    const slack = connections + result.errors + 2;
    // A failed request is no path problem, but it is never normal here (each one cost wrk
    // a connection): said loudly, with wrk's own breakdown.
    const parts: string[] = [`${result.tool} ${n} responses${result.errors > 0 ? `, **${result.errors} failed (${result.errorDetail})**` : ''}`];
    const problems: string[] = [];
    const within = (what: string, value: number, low: number, high: number): void => {
      parts.push(`${what} ${value}`);
      if (!(value >= low && value <= high)) problems.push(`${what} ${value}, expected ${low}..${high}`);
    };
    const fresh = (low: number): [number, number] => (kind === 'close' ? [n, n + slack] : [low, slack]);
    within('origin requests', after.origin.requests - before.origin.requests - 1, n, n + slack);
    this.proxies.forEach((proxy, i) => {
      const a = after.proxies[i]!;
      const b = before.proxies[i]!;
      // An HTTP proxy parses HTTP rows; on HTTPS rows (the chain) it relays TLS as opaque
      // bytes. A TLS proxy counts handshakes on HTTPS rows; plain HTTP it relays as opaque.
      const tls = rowTarget(row).scheme === 'https';
      if (a.requests !== undefined && b.requests !== undefined) {
        const d = a.requests - b.requests - (proxy.name === 'squid' ? 1 : 0); // the manager's own request
        if (proxy.countsHttp && (!tls || proxy.decryptsTls)) within(`${proxy.name} requests`, d, n, n + slack);
        else if (!proxy.countsHttp && tls) within(`${proxy.name} handshakes`, d, ...fresh(1));
      }
      if (a.connections !== undefined && b.connections !== undefined) within(`${proxy.name} connections`, a.connections - b.connections, ...fresh(1));
      if (a.secondHop !== undefined && b.secondHop !== undefined && this.proxies.length > 1) {
        const d = a.connections! - b.connections!;
        within(`${proxy.name} flows with 2 redirects in their records`, a.secondHop - b.secondHop, d, d);
      }
    });
    if (after.redirected !== undefined && before.redirected !== undefined) {
      // A lower bound only: the rule's counter counts packets that created a connection, and
      // it reads a few more than the proxy accepted (a SYN meeting a reused port's old
      // conntrack entry goes through the chain again). The proxy's own count bounds loops.
      const d = after.redirected - before.redirected;
      parts.push(`kernel redirects ${d}`);
      if (d < (kind === 'close' ? n : 1)) problems.push(`kernel redirects ${d}, expected at least ${kind === 'close' ? n : 1}`);
    }
    if (this.proxies.length === 0) parts.push('no rule in the namespace');
    return { evidence: parts.join(', '), problems };
  }

  /** Peak RSS of each proxy with `idleConnections` idle connections open. */
  private async idle(row: RowSpec): Promise<IdleMemory> {
    const { scheme, port } = rowTarget(row);
    const baseline = this.proxies.map((p) => readMemory(p.pid));
    const before = await Promise.all(this.proxies.map((p) => p.counts()));
    const spec: IdleSpec = {
      host: ORIGIN_ADDRESS,
      port,
      tls: scheme === 'https',
      count: this.settings.idleConnections,
      path: SMALL_PATH,
      bodyBytes: SMALL_BYTES,
      ...(this.started?.embedded === true && { registry: this.ctx.registry }),
      concurrency: IDLE_CONCURRENCY,
      timeoutMs: IDLE_TIMEOUT_MS,
    };
    const idle = await openIdle(this.ctx.ns, spec);
    try {
      await sleep(1000);
      const memory = this.proxies.map((p) => readMemory(p.pid));
      const after = await Promise.all(this.proxies.map((p) => p.counts()));
      const problems: string[] = [];
      if (idle.open < spec.count) problems.push(`only ${idle.open} of ${spec.count} idle connections open (${idle.firstError ?? 'closed by the proxy'})`);
      this.proxies.forEach((proxy, i) => {
        const a = after[i]?.connections;
        const b = before[i]?.connections;
        if (a !== undefined && b !== undefined && a - b < idle.open) problems.push(`${proxy.name} accepted ${a - b} of the ${idle.open} idle connections`);
      });
      const proxies = this.proxies.map((p, i) => ({ name: p.name, pid: p.pid, baselineKiB: baseline[i]!.rssKiB, rssKiB: memory[i]!.rssKiB, peakKiB: memory[i]!.hwmKiB }));
      const perConnectionKiB = proxies.reduce((sum, p) => sum + perConnection(p, idle.open), 0);
      log(
        `   ${row.label} [${row.section}] idle: ${idle.open} open; ` +
          proxies.map((p) => `${p.name} RSS ${(p.baselineKiB / 1024).toFixed(1)} → ${(p.rssKiB / 1024).toFixed(1)} MiB, peak ${(p.peakKiB / 1024).toFixed(1)} MiB`).join('; ') +
          `; ${perConnectionKiB.toFixed(1)} KiB per connection${problems.length > 0 ? `; PROBLEMS: ${problems.join('; ')}` : ''}`,
      );
      return { requested: spec.count, open: idle.open, failed: idle.failed, firstError: idle.firstError, proxies, perConnectionKiB, problems };
    } finally {
      await idle.close();
      // The proxies close their side and their origin legs before anything is measured.
      await sleep(1000);
    }
  }
}

interface NftJson {
  readonly nftables: readonly {
    readonly table?: { readonly name: string };
    readonly rule?: { readonly table: string; readonly expr: readonly { readonly counter?: { readonly packets: number } }[] };
  }[];
}

/**
 * The namespace's tables, from `nft list tables` (text: nft 1.0.6's JSON of a table with
 * `flags owner`, as the coproxy vendors make theirs, prints its flags from the wrong
 * memory, and is at times cut short).
 */
function tableNames(ns: Namespace): string[] {
  return ns
    .exec('nft', ['list', 'tables'])
    .split('\n')
    .flatMap((line) => {
      const m = /^table \S+ (\S+)/.exec(line.trim());
      return m === null ? [] : [m[1]!];
    });
}

/** Rules in the namespace: those coproxy installed (its `coproxy-*` tables) and the rest, written by hand. Text with handles, as {@link tableNames} says why. */
function countRules(ns: Namespace): { byHand: number; installed: number } {
  let byHand = 0;
  let installed = 0;
  let table = '';
  for (const raw of ns.exec('nft', ['-a', 'list', 'ruleset']).split('\n')) {
    const line = raw.trim();
    const t = /^table \S+ (\S+)/.exec(line);
    if (t !== null) table = t[1]!;
    // Every rule line ends with its handle; table and chain lines name theirs after `{`.
    else if (/# handle \d+$/.test(line) && !line.startsWith('chain ')) {
      if (table.startsWith('coproxy-')) installed++;
      else byHand++;
    }
  }
  return { byHand, installed };
}

function redirectCounter(ns: Namespace, table: string): number {
  const json = JSON.parse(ns.exec('nft', ['-j', 'list', 'table', 'inet', table])) as NftJson;
  for (const item of json.nftables) {
    const counter = item.rule?.expr.find((e) => e.counter !== undefined)?.counter;
    if (counter !== undefined) return counter.packets;
  }
  return NaN;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`compare failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
