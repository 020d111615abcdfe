import type { Section } from './configurations.js';
import type { LoadResult } from './measure.js';

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
}

export interface Report {
  readonly machine: Machine;
  readonly settings: Settings;
  readonly rows: readonly RowResult[];
  readonly skipped: readonly string[];
  readonly profiles: readonly ProfileSummary[];
  readonly durationSeconds: number;
  readonly notes: readonly string[];
}
