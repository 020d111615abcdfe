import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { captureOutput, exitedWithin, firstLine } from '@coproxy/bench-kit';
import type { Namespace } from './namespace.js';

const here = path.dirname(fileURLToPath(import.meta.url));

/** One bounded load run, by wrk, h2load or the Node client. */
export interface LoadResult {
  readonly tool: 'wrk' | 'node' | 'h2load';
  /** Responses completed within the run. */
  readonly requests: number;
  /** Bytes received (wrk: headers included; Node client: bodies). */
  readonly bytes: number;
  readonly seconds: number;
  /** wrk: connect, read, write, status (non-2xx/3xx) and timeouts, summed; Node client: failed requests. */
  readonly errors: number;
  readonly errorDetail: string;
  readonly requestsPerSecond: number;
  /** 10^6 bytes per second. */
  readonly megabytesPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Share of the machine's CPU capacity used by processes that are not the bench's during the run, 0..1. */
  readonly foreignCpu: number;
}

export interface LoadSpec {
  readonly url: string;
  readonly seconds: number;
  readonly connections: number;
  readonly timeoutSeconds: number;
  /** A new connection per request (`Connection: close`). */
  readonly close: boolean;
}

/** wrk's own figures, as JSON: the text summary rounds them. */
const WRK_SCRIPT = `
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"bytes":%d,"durationUs":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50Us":%d,"p99Us":%d}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
`;

/** How long past its duration a load run may take before it is killed. */
const OVERRUN_MS = 20_000;

export function writeWrkScript(dir: string): string {
  const file = path.join(dir, 'report.lua');
  fs.writeFileSync(file, WRK_SCRIPT);
  return file;
}

/** Runs wrk in the namespace: one thread (the proxies get the other core), `--latency`, bounded. */
export async function runWrk(ns: Namespace, spec: LoadSpec, script: string, doneFile?: string): Promise<LoadResult> {
  const wrkArgs = ['-t1', `-c${spec.connections}`, `-d${spec.seconds}s`, `--timeout`, `${spec.timeoutSeconds}s`, '--latency', '-s', script];
  if (spec.close) wrkArgs.push('-H', 'Connection: close');
  wrkArgs.push(spec.url);
  // `times` reports the CPU time wrk used, which the foreign-load figure must not count.
  if (doneFile !== undefined) fs.rmSync(doneFile, { force: true });
  // A count-bounded run (writeLimitedWrkScript): SIGINT once its script says the count is reached.
  let interrupted = false;
  const onTick = (): void => {
    if (doneFile === undefined || interrupted || !fs.existsSync(doneFile)) return;
    interrupted = true;
    for (const pid of ns.pids()) if (commandOf(pid) === 'wrk') process.kill(pid, 'SIGINT');
  };
  const { stdout, cpu } = await runMeasured(ns, 'bash', ['-c', 'wrk "$@"; status=$?; times; exit $status', 'wrk', ...wrkArgs], spec.seconds, onTick);
  const line = stdout.split('\n').find((l) => l.startsWith('WRK_JSON '));
  if (line === undefined) throw new Error(`wrk ${wrkArgs.join(' ')}: no report:\n${stdout.trim()}`);
  const r = JSON.parse(line.slice('WRK_JSON '.length)) as Record<'requests' | 'bytes' | 'durationUs' | 'connect' | 'read' | 'write' | 'status' | 'timeout' | 'p50Us' | 'p99Us', number>;
  const seconds = r.durationUs / 1e6;
  const errors = r.connect + r.read + r.write + r.status + r.timeout;
  const detail = Object.entries({ connect: r.connect, read: r.read, write: r.write, status: r.status, timeout: r.timeout })
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  return {
    tool: 'wrk',
    requests: r.requests,
    bytes: r.bytes,
    seconds,
    errors,
    errorDetail: detail,
    requestsPerSecond: r.requests / seconds,
    megabytesPerSecond: r.bytes / seconds / 1e6,
    p50Ms: r.p50Us / 1000,
    p99Ms: r.p99Us / 1000,
    foreignCpu: cpu.foreign(childTicks(stdout)),
  };
}

/** The children's user and system time from bash's `times` (its second line), in clock ticks. */
function childTicks(stdout: string): number | undefined {
  const lines = stdout.trim().split('\n');
  const m = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines[lines.length - 1] ?? '');
  if (m === null) return undefined;
  return (Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) * 60 + Number(m[4])) * CLOCK_TICKS;
}

export interface H2LoadSpec {
  readonly url: string;
  readonly seconds: number;
  /** TCP connections, each with `streams` concurrent streams (`-c`, `-m`). */
  readonly connections: number;
  readonly streams: number;
}

/**
 * Runs h2load in the namespace: one thread, HTTP/2 over TLS (ALPN h2; h2load does not
 * verify the certificate), bounded by `-D` and by the run's overrun limit. h2load prints
 * no percentiles, so p50/p99 are left out (NaN).
 */
export async function runH2load(ns: Namespace, spec: H2LoadSpec): Promise<LoadResult> {
  const args = ['-t1', `-c${spec.connections}`, `-m${spec.streams}`, '-D', String(spec.seconds), spec.url];
  const { stdout, cpu } = await runMeasured(ns, 'bash', ['-c', 'h2load "$@"; status=$?; times; exit $status', 'h2load', ...args], spec.seconds);
  const done = /^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/m.exec(stdout);
  const finished = /^finished in ([\d.]+)(ms|s),/m.exec(stdout);
  const traffic = /^traffic: [^(]*\((\d+)\) total/m.exec(stdout);
  const protocol = /^Application protocol: (\S+)/m.exec(stdout)?.[1];
  if (done === null || finished === null) throw new Error(`h2load ${args.join(' ')}: no report:\n${stdout.trim()}`);
  const seconds = Number(finished[1]) / (finished[2] === 'ms' ? 1000 : 1);
  const status = /^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/m.exec(stdout);
  const bad = status === null ? 0 : Number(status[3]) + Number(status[4]);
  const [failed, errored, timeout] = [Number(done[5]), Number(done[6]), Number(done[7])];
  const requests = Number(done[4]) - bad;
  const bytes = Number(traffic?.[1] ?? 0);
  const detail = Object.entries({ failed, errored, timeout, '4xx/5xx': bad, ...(protocol !== 'h2' && { [`protocol ${protocol ?? 'none'}`]: 1 }) })
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  return {
    tool: 'h2load',
    requests,
    bytes,
    seconds,
    // A connection that did not negotiate h2 is an error here: the row is about HTTP/2.
    errors: failed + errored + timeout + bad + (protocol === 'h2' ? 0 : 1),
    errorDetail: detail,
    requestsPerSecond: requests / seconds,
    megabytesPerSecond: bytes / seconds / 1e6,
    p50Ms: NaN,
    p99Ms: NaN,
    foreignCpu: cpu.foreign(childTicks(stdout)),
  };
}

export interface NodeLoadSpec {
  readonly host: string;
  readonly port: number;
  readonly registry?: string;
  readonly mode: 'keep-alive' | 'close' | 'bulk';
  readonly path: string;
  readonly seconds: number;
  readonly concurrency: number;
  readonly timeoutMs: number;
}

/** Runs the Node load client (load-client.js) in the namespace. */
export async function runNodeLoad(ns: Namespace, spec: NodeLoadSpec): Promise<LoadResult> {
  const { stdout, cpu } = await runMeasured(ns, process.execPath, [path.join(here, 'load-client.js'), JSON.stringify(spec)], spec.seconds);
  const line = stdout.split('\n').find((l) => l.startsWith('{'));
  if (line === undefined) throw new Error(`load client: no report:\n${stdout.trim()}`);
  const r = JSON.parse(line) as { requests: number; bytes: number; seconds: number; errors: number; firstError?: string; p50Ms: number; p99Ms: number };
  return {
    tool: 'node',
    requests: r.requests,
    bytes: r.bytes,
    seconds: r.seconds,
    errors: r.errors,
    errorDetail: r.firstError ?? '',
    requestsPerSecond: r.requests / r.seconds,
    megabytesPerSecond: r.bytes / r.seconds / 1e6,
    p50Ms: r.p50Ms,
    p99Ms: r.p99Ms,
    // The Node client is a process of the namespace until it exits: its last reading counts as the bench's.
    foreignCpu: cpu.foreign(),
  };
}

/** Spawns a load generator, bounded in time, with the machine's CPU accounted around it. */
async function runMeasured(ns: Namespace, command: string, args: readonly string[], seconds: number, onTick?: () => void): Promise<{ stdout: string; cpu: CpuWindow }> {
  const cpu = new CpuWindow(ns);
  const child = ns.spawn(command, args, { output: 'pipe' });
  child.stdin?.end();
  const output = captureOutput(child);
  // A sample while the client still runs: its own CPU time until then is the bench's.
  const sampler = setInterval(() => {
    cpu.sample();
    onTick?.();
  }, 200);
  const { code, signal } = await exitedWithin(child, seconds * 1000 + OVERRUN_MS);
  clearInterval(sampler);
  cpu.end();
  if (code !== 0) throw new Error(`${path.basename(command)} ${args.slice(0, 3).join(' ')}… exited with ${String(code ?? signal)}: ${output.stderr.trim() || output.stdout.trim()}`);
  return { stdout: output.stdout, cpu };
}

/** Share of the machine's CPU that processes outside the bench used over the next `ms` (nothing of the bench's runs meanwhile but its proxies' leftovers). */
export async function foreignLoad(ns: Namespace, ms: number): Promise<number> {
  const window = new CpuWindow(ns);
  await new Promise((resolve) => setTimeout(resolve, ms));
  window.end();
  return window.foreign();
}

export const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** utime + stime of a process (all its threads), in clock ticks; 0 once it is gone. */
export function processTicks(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0; // exited between the listing and the read
  }
}

/** A process's command name (`/proc/PID/comm`); undefined once it is gone. */
function commandOf(pid: number): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'latin1').trim();
  } catch {
    return undefined;
  }
}

/** CPU time of the kernel's ksoftirqd threads (one per CPU), in clock ticks. */
function softirqThreadTicks(): number {
  let ticks = 0;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/comm`, 'latin1').startsWith('ksoftirqd/')) ticks += processTicks(Number(entry));
    } catch {
      continue; // exited since the listing
    }
  }
  return ticks;
}

/**
 * Busy and total ticks of the whole machine, from /proc/stat's first line. Interrupt and
 * softirq time is left out of `busy`: it belongs to no process, and during a run it is
 * mostly the bench's own loopback traffic. Steal (the hypervisor running others) counts.
 */
function machineTicks(): { busy: number; total: number } {
  const fields = fs.readFileSync('/proc/stat', 'latin1').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = fields;
  const busy = user + nice + system + steal;
  return { busy, total: busy + idle + iowait + irq + softirq };
}

/**
 * The CPU the machine spent during a window on anything but the bench: its namespace's
 * processes (sampled, so a process that exits mid-window keeps its last reading), this
 * process, and the load generator's own time. Other work on a shared machine (a test
 * suite, a build) shows up here, and a run it disturbed can be repeated.
 */
class CpuWindow {
  private readonly startMachine = machineTicks();
  private readonly startSoftirqThreads = softirqThreadTicks();
  private readonly startSelf = process.cpuUsage();
  private readonly before = new Map<number, number>();
  private readonly latest = new Map<number, number>();
  private endMachine: { busy: number; total: number } | undefined;
  private endSoftirqThreads: number | undefined;
  private endSelf: NodeJS.CpuUsage | undefined;

  constructor(private readonly ns: Namespace) {
    for (const pid of ns.pids()) this.before.set(pid, processTicks(pid));
  }

  sample(): void {
    for (const pid of this.ns.pids()) {
      const ticks = processTicks(pid);
      if (ticks > 0) this.latest.set(pid, ticks);
    }
  }

  end(): void {
    this.sample();
    this.endSoftirqThreads = softirqThreadTicks();
    this.endMachine = machineTicks();
    this.endSelf = process.cpuUsage(this.startSelf);
  }

  /**
   * Share of the machine used by others. `clientTicks`: the load generator's exact CPU time
   * when known (wrk, through bash's `times`); then the samples of processes that started
   * within the window (the generator itself) are ignored in its favour.
   */
  foreign(clientTicks?: number): number {
    const end = this.endMachine ?? machineTicks();
    const self = this.endSelf ?? process.cpuUsage(this.startSelf);
    let ours = (clientTicks ?? 0) + ((self.user + self.system) / 1e6) * CLOCK_TICKS;
    // Softirq work the kernel hands to its threads under load: the bench's loopback traffic.
    ours += (this.endSoftirqThreads ?? softirqThreadTicks()) - this.startSoftirqThreads;
    for (const [pid, ticks] of this.latest) {
      const before = this.before.get(pid);
      if (before !== undefined) ours += ticks - before;
      else if (clientTicks === undefined) ours += ticks;
    }
    const total = end.total - this.startMachine.total;
    if (total <= 0) return 0;
    return Math.max(0, (end.busy - this.startMachine.busy - ours) / total);
  }
}

export interface IdleSpec {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly count: number;
  readonly path: string;
  readonly bodyBytes: number;
  readonly registry?: string;
  readonly concurrency: number;
  readonly timeoutMs: number;
}

export interface IdleConnections {
  readonly open: number;
  readonly failed: number;
  readonly firstError: string | undefined;
  close(): Promise<void>;
}

/** Opens `count` connections with one request each and holds them idle until `close()`. */
export async function openIdle(ns: Namespace, spec: IdleSpec): Promise<IdleConnections> {
  const child = ns.spawn(process.execPath, [path.join(here, 'idle-client.js'), JSON.stringify(spec)], { output: 'pipe' });
  const close = async (): Promise<void> => {
    child.stdin?.end();
    await exitedWithin(child, 10_000);
  };
  const line = await firstLine(child, 'idle client', spec.timeoutMs + 10_000);
  let report: { open: number; failed: number; firstError?: string };
  try {
    report = JSON.parse(line) as typeof report;
  } catch (error) {
    throw new Error(`idle client: unexpected output ${JSON.stringify(line)}`, { cause: error });
  }
  return { open: report.open, failed: report.failed, firstError: report.firstError, close };
}

export interface ProbeSpec {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly path: string;
  /** At most this many requests, one connection at a time… */
  readonly count: number;
  /** …and for at most this long. */
  readonly seconds: number;
  readonly timeoutMs: number;
}

/** The latency probe's figures (ttfb-client.js): time to first byte from connect start, one new connection at a time. */
export interface ProbeResult {
  readonly requests: number;
  readonly errors: number;
  readonly firstError: string | undefined;
  readonly seconds: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly foreignCpu: number;
}

/** Runs the latency probe in the namespace, bounded in count and time. */
export async function runLatencyProbe(ns: Namespace, spec: ProbeSpec): Promise<ProbeResult> {
  const { stdout, cpu } = await runMeasured(ns, process.execPath, [path.join(here, 'ttfb-client.js'), JSON.stringify(spec)], spec.seconds);
  const line = stdout.split('\n').find((l) => l.startsWith('{'));
  if (line === undefined) throw new Error(`latency probe: no report:\n${stdout.trim()}`);
  const r = JSON.parse(line) as { requests: number; errors: number; firstError?: string; seconds: number; p50Ms: number | null; p99Ms: number | null };
  return { requests: r.requests, errors: r.errors, firstError: r.firstError, seconds: r.seconds, p50Ms: r.p50Ms ?? NaN, p99Ms: r.p99Ms ?? NaN, foreignCpu: cpu.foreign() };
}

/**
 * wrk's report script plus a bound in count (the soak's rounds; `-d` still bounds them in
 * time): once `limit` responses have come (one thread: the run's count), the thread stops
 * and writes `doneFile`; {@link runWrk} then sends wrk SIGINT, which ends its wait for `-d`
 * and has it report as at the end of a run.
 */
export function writeLimitedWrkScript(dir: string, limit: number): { script: string; doneFile: string } {
  const script = path.join(dir, `report-limit-${limit}.lua`);
  const doneFile = path.join(dir, `report-limit-${limit}.done`);
  const counting = [
    'local seen = 0',
    'response = function(status, headers, body)',
    '  seen = seen + 1',
    `  if seen == ${limit} then`,
    `    local f = io.open(${JSON.stringify(doneFile)}, "w")`,
    '    f:write("done")',
    '    f:close()',
    '    wrk.thread:stop()',
    '  end',
    'end',
  ].join('\n');
  fs.writeFileSync(script, `${WRK_SCRIPT}\n${counting}\n`);
  return { script, doneFile };
}
