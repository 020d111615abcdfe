import type { Section } from './configurations.js';
import type { LoadResult, ProbeResult } from './measure.js';

/** The serialisable results of a comparison run (`--json`), apart from the code that produces them. */

export type RunKind = 'keep-alive' | 'close' | 'bulk';

export interface MeasuredRun {
  readonly kind: RunKind;
  readonly result: LoadResult;
  /** The first attempt was disturbed by other work on the machine and this is the second. */
  readonly repeated: boolean;
  /** What each counter saw during the run, for the path check. */
  readonly evidence: string;
  /** Path-check failures; empty when every counter agrees with the load generator. */
  readonly problems: readonly string[];
  /** CPU time the proxy processes (all their threads) spent per completed request, µs; undefined without a proxy. */
  readonly proxyCpuUsPerRequest: number | undefined;
}

export interface ProxyMemory {
  readonly name: string;
  readonly pid: number;
  /** Before the idle connections, after a probe request: KiB. */
  readonly baselineKiB: number;
  /** With the idle connections open. */
  readonly rssKiB: number;
  /** VmHWM then: the peak since the process started. */
  readonly peakKiB: number;
}

export interface IdleMemory {
  readonly requested: number;
  readonly open: number;
  readonly failed: number;
  readonly firstError: string | undefined;
  readonly proxies: readonly ProxyMemory[];
  /** (RSS with the connections − baseline), summed over the proxies, per open connection: KiB. */
  readonly perConnectionKiB: number;
  readonly problems: readonly string[];
}

export interface Rules {
  /** Rules the operator writes (nft), and the tables they sit in. */
  readonly byHand: number;
  /** Rules coproxy installs and removes itself. */
  readonly installed: number;
  readonly uidExclusions: number;
}

export interface RowResult {
  readonly key: string;
  readonly label: string;
  readonly section: Section;
  readonly configuration: string;
  readonly setup: string;
  readonly tool: 'wrk' | 'node' | 'h2load';
  readonly runs: readonly MeasuredRun[];
  readonly memory: IdleMemory | undefined;
  readonly rules: Rules;
  /** Which counters the path check read. */
  readonly countSources: readonly string[];
  readonly inPath: boolean;
  /** HTTP and HTTPS rows: the latency probe (one new connection at a time, time to first byte). */
  readonly latency?: ProbeResult;
  /** VmHWM of each proxy process at the end of its configuration (after every run of every row): the same on each row of a configuration. */
  readonly peak?: readonly ProcessPeak[];
}

export interface ProcessPeak {
  readonly name: string;
  readonly pid: number;
  /** VmHWM: the peak resident set since the process started, KiB. */
  readonly hwmKiB: number;
}

/** A vendor's memory after one soak round. */
export interface SoakReading {
  readonly name: string;
  readonly rssKiB: number;
  /** V8 heap used (the vendor's `<prefix>_heap_used_bytes` gauge), bytes; undefined when not exposed. */
  readonly heapUsedBytes: number | undefined;
}

export interface SoakRound {
  /** Flows (responses) completed in this round. */
  readonly flows: number;
  readonly errors: number;
  readonly seconds: number;
  readonly readings: readonly SoakReading[];
  readonly problems: readonly string[];
}

/** Rounds of short flows through the chain, each vendor's memory read after each. */
export interface SoakResult {
  readonly label: string;
  readonly setup: string;
  /** Flows asked per round. */
  readonly flowsPerRound: number;
  readonly rounds: readonly SoakRound[];
  /** Before the first round (after a probe request). */
  readonly before: readonly SoakReading[];
  /** Why the soak stopped before its last round (a vendor exited, a reading failed). */
  readonly stopped?: string;
}

export interface ProfileSummary {
  readonly vendor: string;
  readonly file: string;
  readonly samplesMs: number;
  /** Self time by function, highest first: share of all samples (idle included). */
  readonly top: readonly { readonly fn: string; readonly share: number }[];
  readonly idleShare: number;
  readonly gcShare: number;
}

export interface Machine {
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly os: string;
  readonly node: string;
  readonly packages: Readonly<Record<string, string>>;
  readonly date: string;
}

export interface Settings {
  readonly seconds: number;
  readonly connections: number;
  readonly bulkConnections: number;
  readonly idleConnections: number;
  readonly noiseLimit: number;
  readonly cpuProf: string | undefined;
  /** Whether the coproxy vendors may move bulk bytes with splice(2) (`COPROXY_KERNEL_SPLICE=0` turns it off). */
  readonly kernelSplice: boolean;
  /** The latency probe: at most `requests` per HTTP/HTTPS row (0: none), within `seconds`. */
  readonly probe: { readonly requests: number; readonly seconds: number };
  /** The soak: `rounds` of `flows` new connections each, by `connections` wrk connections, each round within `roundSeconds`. */
  readonly soak: { readonly flows: number; readonly rounds: number; readonly roundSeconds: number; readonly connections: number };
}

export interface Report {
  readonly machine: Machine;
  readonly settings: Settings;
  readonly rows: readonly RowResult[];
  readonly skipped: readonly string[];
  readonly profiles: readonly ProfileSummary[];
  readonly durationSeconds: number;
  readonly notes: readonly string[];
  readonly soak?: SoakResult;
}
