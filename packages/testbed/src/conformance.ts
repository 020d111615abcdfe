import type { FlowShape } from './flows.js';
import { type Backend, type FlowResult, type Report, type ScenarioOptions, type VendorSpec, LOOP_BOUND, runScenario } from './scenario.js';

/**
 * The conformance kit: a fixed, versioned set of checks that any vendor built on core
 * (the candidate) must pass to chain with others: alone; first, in the middle of and last
 * in a chain with the two reference vendors; beside a neighbour that drops records; killed
 * and restarted fail-open and fail-closed; half-close; large bodies both ways; many
 * concurrent flows; a slow reader. Each check is one testbed run; its verdict is one line.
 *
 * The version changes whenever a check is added, removed or made stricter, so that a
 * vendor's "passes conformance 2" keeps one meaning. Version 2: every check also fails a
 * candidate that leaves a process running once it has been stopped, and
 * records-dropping-neighbour fails a loop the kit had to cut or bytes that did not arrive.
 */
export const CONFORMANCE_VERSION = 2;

/** The candidate's id in every check; the reference vendors keep theirs. */
export const CANDIDATE_ID = 'candidate';
const TLS = 'tls-vendor';
const HTTP = 'http-vendor';
const MIB = 1024 * 1024;

export interface CheckDefinition {
  readonly name: string;
  readonly description: string;
  /** The run, given the candidate (its id and priority are set by the check). */
  readonly scenario: (candidate: VendorSpec) => Omit<ScenarioOptions, 'backend' | 'seed'>;
  /** The check's verdict over the run; default: every flow as it must be (exit 0). */
  readonly verdict?: (report: Report) => Verdict;
}

export interface Verdict {
  readonly passed: boolean;
  readonly reason: string;
  /** The flow the reason is about. */
  readonly flow?: number | undefined;
}

export interface CheckResult extends Verdict {
  readonly name: string;
  readonly description: string;
  readonly durationMs: number;
  /** The run's full report; absent when the run could not start (the reason says why). */
  readonly report?: Report | undefined;
}

export interface ConformanceReport {
  readonly kit: 'coproxy-testbed conformance';
  readonly version: typeof CONFORMANCE_VERSION;
  readonly backend: Backend;
  readonly seed: number;
  /** The candidate as given: a built-in vendor's kind or the command. */
  readonly candidate: string;
  readonly startedAt: string;
  readonly durationMs: number;
  readonly checks: readonly CheckResult[];
  readonly passed: boolean;
}

const candidate = (spec: VendorSpec, priority: number, failMode: 'open' | 'closed' = 'open'): VendorSpec => ({ ...spec, id: CANDIDATE_ID, priority, failMode });
const reference = (kind: 'tls' | 'http', priority: number, dropsRecords = false): VendorSpec => ({ kind, id: kind === 'tls' ? TLS : HTTP, priority, dropsRecords });
const alone = (shape: FlowShape, flows: number, concurrency = flows) => (spec: VendorSpec) => ({ vendors: [candidate(spec, 10)], flows, concurrency, shape });

/** The checks, in the order they run. Names are stable: tests and CI logs refer to them. */
export const CHECKS: readonly CheckDefinition[] = [
  {
    name: 'alone',
    description: 'the candidate alone takes HTTP, HTTPS and raw TCP flows once each, with the bytes intact',
    scenario: alone({}, 6),
  },
  {
    name: 'first-in-chain',
    description: 'the candidate first, then coproxy-tls and coproxy-http: each vendor once, in priority order',
    scenario: (spec) => ({ vendors: [candidate(spec, 5), reference('tls', 10), reference('http', 20)], flows: 6, concurrency: 6 }),
  },
  {
    name: 'middle-of-chain',
    description: 'coproxy-tls, the candidate, coproxy-http: the candidate carries the records it got onward',
    scenario: (spec) => ({ vendors: [reference('tls', 10), candidate(spec, 15), reference('http', 20)], flows: 6, concurrency: 6 }),
  },
  {
    name: 'last-in-chain',
    description: 'coproxy-tls, coproxy-http, then the candidate: it sees RedirectedByOther and delivers to the origin',
    scenario: (spec) => ({ vendors: [reference('tls', 10), reference('http', 20), candidate(spec, 30)], flows: 6, concurrency: 6 }),
  },
  {
    name: 'records-dropping-neighbour',
    description: 'the candidate first, then coproxy-http dropping records: each flow comes back to the candidate once, which carries the records it got then, so the loop ends by itself and the bytes arrive intact',
    scenario: (spec) => ({ vendors: [candidate(spec, 5), reference('http', 20, true)], flows: 3, concurrency: 3, flowTimeoutMs: 8000 }),
    verdict: (report) => {
      const looped = report.flows.find((f) => f.looped);
      if (looped === undefined) {
        const flow = report.flows.find((f) => f.client?.ok !== true) ?? report.flows[0];
        return { passed: false, reason: `no loop although the neighbour dropped the records: ${describeHops(flow)}`, flow: flow?.index };
      }
      const again = looped.hops.filter((h) => h.vendor === CANDIDATE_ID).length;
      if (again < 2) return { passed: false, reason: `the loop went around without the candidate: ${describeHops(looped)}`, flow: looped.index };
      // The neighbour's onward leg lost the candidate's record, so the redirect layer sent the
      // flow back: the candidate, which cannot know, inspects it again (that is the loop the
      // records prevent). Its second pass sees the neighbour's record: carried onward, it ends
      // the loop. A candidate that drops records too keeps it going until the kit's bound.
      if (report.loopStopped) {
        return { passed: false, reason: `the loop did not end by itself (the candidate did not carry the records it got when the flow came back), cut after ${LOOP_BOUND} passes: ${describeHops(looped)}`, flow: looped.index };
      }
      const broken = report.flows.find((f) => !intact(f));
      if (broken !== undefined) {
        const why = broken.client?.ok !== true ? `the client failed: ${broken.client?.error ?? 'no report'}` : 'bytes differ between client and origin';
        return { passed: false, reason: `after the loop, ${why}: ${describeHops(broken)}`, flow: broken.index };
      }
      return { passed: true, reason: `the loop ended by the records the candidate carried, bytes intact: ${describeHops(looped)}`, flow: looped.index };
    },
  },
  {
    name: 'fail-open-restart',
    description: 'coproxy-tls, the candidate (fail-open), coproxy-http; the candidate is killed, flows go on through the others uninspected by it, then it restarts and inspects again',
    scenario: (spec) => ({ vendors: [reference('tls', 10), candidate(spec, 15, 'open'), reference('http', 20)], flows: 9, concurrency: 3, restart: CANDIDATE_ID }),
  },
  {
    name: 'fail-closed-restart',
    description: 'the same with the candidate fail-closed: while it is down, flows fail and none reaches the origin; after its restart they flow again',
    scenario: (spec) => ({ vendors: [reference('tls', 10), candidate(spec, 15, 'closed'), reference('http', 20)], flows: 9, concurrency: 3, restart: CANDIDATE_ID, flowTimeoutMs: 8000 }),
  },
  {
    name: 'half-close',
    description: 'raw TCP flows whose origin answers only after the client half-closed (small and large): the candidate carries the FIN on and the answer back',
    scenario: alone({ kinds: ['tcp'], echoAfterEnd: true, payloadBytes: [100, 3000, 256 * 1024] }, 3),
  },
  {
    name: 'large-bodies',
    description: '8 MiB each way over raw TCP, 4 MiB up over HTTPS, 3 × 1 MiB over HTTP keep-alive',
    scenario: alone({ kinds: ['tcp', 'https', 'http'], payloadBytes: [8 * MIB, 4 * MIB, 1 * MIB] }, 3),
  },
  {
    name: 'many-concurrent-flows',
    description: '64 flows of every kind at once',
    scenario: alone({}, 64, 64),
  },
  {
    name: 'slow-reader',
    description: 'a client that reads 4 MiB echoes in 64 KiB steps with pauses: the candidate holds back and delivers every byte',
    scenario: alone({ kinds: ['tcp'], payloadBytes: 4 * MIB, slowReader: true }, 2),
  },
];

/** `flow 2 went client → tls-vendor[NotRedirected] → candidate[…] → origin`; `… → (not to the origin)` when the origin never saw it. */
function describeHops(flow: FlowResult | undefined): string {
  if (flow === undefined) return 'no flow';
  const end = (flow.origin?.connections ?? 0) > 0 ? 'origin' : '(not to the origin)';
  return `flow ${flow.index} went client → ${[...flow.hops.map((h) => `${h.vendor}[${h.state}]`), end].join(' → ')}`;
}

/** The client got its answer and client and origin saw the same bytes both ways. */
const intact = (flow: FlowResult): boolean =>
  flow.client?.ok === true && flow.origin !== undefined && flow.origin.received === flow.client.sent && flow.origin.sent === flow.client.received;

/** The default verdict: the first flow that broke an invariant, or the whole run. */
function everyFlow(report: Report): Verdict {
  const bad = report.flows.find((f) => f.problems.length > 0);
  if (bad === undefined) {
    const vendors = [...report.vendors].sort((a, b) => a.priority - b.priority).map((v) => v.id);
    const down = report.flows.filter((f) => f.phase === 'vendor-down');
    if (down.length === 0) return { passed: true, reason: `${report.flows.length} flows, each through ${vendors.join(' → ')} as it had to, bytes intact` };
    // A restart: the flows while the candidate was down went another way, or nowhere.
    const meanwhile = down.every((f) => f.expected.length === 0) ? 'refused, none reaching the origin' : `through ${down[0]!.expected.join(' → ')}`;
    return {
      passed: true,
      reason: `${report.flows.length - down.length} flows through ${vendors.join(' → ')} before the kill and after the restart, ${down.length} while it was down ${meanwhile}, as they had to`,
    };
  }
  const loop = bad.looped ? `a loop: ${describeHops(bad)}; ` : '';
  return { passed: false, reason: `${loop}${bad.problems.join('; ')}${bad.phase === undefined ? '' : ` (${bad.phase})`}`, flow: bad.index };
}

/** Every check: a candidate that leaves a process running once stopped (SIGTERM, or SIGKILL to its group) fails. */
function withLeftBehind(report: Report, verdict: Verdict): Verdict {
  const left = report.leftBehind.filter((p) => p.vendor === CANDIDATE_ID);
  if (left.length === 0) return verdict;
  const leak = `the candidate left ${left.length} process${left.length === 1 ? '' : 'es'} running after it was stopped: ${left.map((p) => `pid ${p.pid} (${p.command})`).join(', ')}`;
  return verdict.passed ? { passed: false, reason: leak } : { ...verdict, reason: `${verdict.reason}; ${leak}` };
}

export interface ConformanceOptions {
  readonly candidate: VendorSpec;
  readonly backend: Backend;
  readonly seed?: number;
  /** A subset of CHECKS by name; default all. */
  readonly checks?: readonly string[] | undefined;
  /** Checks run at once; default 3. */
  readonly parallel?: number | undefined;
  /** Called with each check's result, in the checks' order. */
  readonly onCheck?: (result: CheckResult) => void;
}

/** The verdict line: `PASS name: reason` or `FAIL name: reason, flow N`. */
export function verdictLine(result: CheckResult): string {
  return `${result.passed ? 'PASS' : 'FAIL'} ${result.name}: ${result.reason}${result.flow === undefined || result.passed ? '' : `, flow ${result.flow}`}`;
}

export async function runConformance(options: ConformanceOptions): Promise<ConformanceReport> {
  const started = Date.now();
  const seed = options.seed ?? 1;
  const unknown = (options.checks ?? []).filter((name) => !CHECKS.some((c) => c.name === name));
  if (unknown.length > 0) throw new RangeError(`no such check: ${unknown.join(', ')} (have ${CHECKS.map((c) => c.name).join(', ')})`);
  const selected = CHECKS.filter((c) => options.checks === undefined || options.checks.includes(c.name));
  // Checks run a few at a time: most of a run is waiting (processes starting, a vendor's
  // inspection deadline), and each run has its own directory, registry, ports and namespace.
  const parallel = Math.max(1, Math.min(options.parallel ?? 3, selected.length));
  const results: (CheckResult | undefined)[] = selected.map(() => undefined);
  let reported = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < selected.length) {
      const i = next++;
      const check = selected[i]!;
      const checkStarted = Date.now();
      let result: CheckResult;
      try {
        // A seed per check: each run's origin takes its own block of ports.
        const report = await runScenario({ ...check.scenario(options.candidate), backend: options.backend, seed: seed * 100 + CHECKS.indexOf(check) });
        result = { name: check.name, description: check.description, durationMs: Date.now() - checkStarted, ...withLeftBehind(report, (check.verdict ?? everyFlow)(report)), report };
      } catch (error) {
        result = { name: check.name, description: check.description, durationMs: Date.now() - checkStarted, passed: false, reason: `the run failed: ${(error as Error).message}` };
      }
      results[i] = result;
      // Verdicts are reported in the checks' order, whatever order the runs end in.
      while (reported < results.length && results[reported] !== undefined) options.onCheck?.(results[reported++]!);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  const done = results.filter((r): r is CheckResult => r !== undefined);
  const candidateName = options.candidate.kind === 'command' ? (options.candidate.command ?? '') : options.candidate.kind;
  return {
    kit: 'coproxy-testbed conformance',
    version: CONFORMANCE_VERSION,
    backend: options.backend,
    seed,
    candidate: candidateName,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    checks: done,
    passed: done.length > 0 && done.every((r) => r.passed),
  };
}
