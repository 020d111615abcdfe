#!/usr/bin/env node
import fs from 'node:fs';
import { BACKEND_NAMES, type BackendName } from '@coproxy/core';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { CHECKS, CONFORMANCE_VERSION, runConformance, verdictLine } from './conformance.js';
import { realFlowLine, runRealClients } from './real-clients.js';
import type { RealClient } from './real-flows.js';
import { conformanceHtml, html, summary } from './report.js';
import { UDP_KINDS } from './flows.js';
import { MAX_FLOWS, type Report, type ScenarioOptions, type VendorSpec, killAll, runScenario } from './scenario.js';

/**
 * coproxy-testbed: runs independent vendor proxies (coproxy-tls, coproxy-http) as
 * separate processes with an origin and a client, and checks that every flow is
 * inspected once by each vendor, in priority order, with its bytes intact.
 *
 *   coproxy-testbed [demo]            the cooperative run, then one vendor dropping records
 *   coproxy-testbed run [options]     one run
 *
 * Exit codes: 0 the invariants hold; 3 a loop was detected (a vendor accepted a flow it
 * had already inspected); 1 anything else (a flow failed, bytes differ, a process failed);
 * 2 a usage error.
 */
const integer = (min: number, max: number) => (text: string): number => {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) throw new InvalidArgumentError(`an integer in ${min}..${max}`);
  return value;
};

/**
 * `--vendors tls,http` and `--vendor 'CMD'` may be mixed and repeated: the vendors start in
 * the order they appear on the command line, so both options add to one list.
 */
const vendorOrder: VendorSpec[] = [];

function vendorList(text: string): VendorSpec[] {
  const kinds = text.split(',').map((k) => k.trim());
  for (const kind of kinds) if (kind !== 'tls' && kind !== 'http') throw new InvalidArgumentError(`'${kind}' is not a built-in vendor: tls or http (any other: --vendor 'CMD')`);
  vendorOrder.push(...kinds.map((kind) => ({ kind: kind as 'tls' | 'http' })));
  if (vendorOrder.length > 8) throw new InvalidArgumentError('one to eight vendors');
  return vendorOrder;
}

function vendorCommand(text: string): VendorSpec[] {
  if (text.trim() === '') throw new InvalidArgumentError('an empty command');
  vendorOrder.push({ kind: 'command', command: text });
  if (vendorOrder.length > 8) throw new InvalidArgumentError('one to eight vendors');
  return vendorOrder;
}

/** The vendors of a run: those given, in order, or the two built-in ones. */
const vendorsOf = (): VendorSpec[] => (vendorOrder.length > 0 ? vendorOrder : [{ kind: 'tls' }, { kind: 'http' }]);
const vendorName = (spec: VendorSpec): string => (spec.kind === 'command' ? `'${spec.command ?? ''}'` : spec.kind);

interface RunOptions {
  backend: BackendName;
  flows: number;
  concurrency: number;
  dropRecords?: string | undefined;
  json?: string | undefined;
  html?: string | undefined;
  seed: number;
  originPortBase?: number | undefined;
  udp?: boolean | undefined;
}

const program = new Command('coproxy-testbed').description('Proves that independent coproxy vendors inspect every flow once, without loops').exitOverride();

const withRunOptions = (command: Command): Command =>
  command
    .addOption(new Option('--backend <name>', 'redirect layer').choices(BACKEND_NAMES).default('embedded'))
    .option('--vendors <list>', 'built-in vendors in start order (tls, http; the same one may repeat); default tls,http', vendorList)
    .option('--vendor <command>', "any vendor built on core, started with sh -c: {id} {priority} {ports} {udpPorts} {backend} {failMode} are replaced, and the same are in COPROXY_VENDOR_* (repeatable, mixed with --vendors in start order)", vendorCommand)
    .option('--flows <n>', `flows to open (http keep-alive, https, raw tcp in turn, udp with --udp), at most ${MAX_FLOWS}`, integer(1, MAX_FLOWS), 30)
    .option('--concurrency <n>', 'flows at a time', integer(1, 64), 8)
    .option('--json <file>', 'write the report as JSON')
    .option('--html <file>', 'write a self-contained HTML report with a hop diagram per flow')
    .option('--seed <n>', 'seed for payloads and priorities', integer(0, 2 ** 31), 1)
    .option('--udp', 'add UDP echo flows (every fourth flow; the vendors get --udp-ports and relay them as an unrecognised datagram protocol)')
    .option('--origin-port-base <port>', "the origin's first port (one per flow, upwards; default: a seeded place outside the kernel's ephemeral port range)", integer(1024, 65_535));

withRunOptions(program.command('run').description('one run'))
  .option('--drop-records <vendor>', 'that vendor (id or kind) does not propagate records: the loop appears')
  .action(async (options: RunOptions) => {
    process.exitCode = await runOnce(options);
  });

withRunOptions(program.command('demo', { isDefault: true }).description('the cooperative run, then the same with one vendor dropping records')).action(async (options: RunOptions) => {
  const cooperative = await runOnce({ ...options, json: suffixed(options.json, 'cooperative'), html: suffixed(options.html, 'cooperative') });
  const builtIn = vendorsOf().filter((v) => v.kind !== 'command');
  const lastVendor = builtIn[builtIn.length - 1]?.kind;
  if (lastVendor === undefined) {
    process.stdout.write('\nNo built-in vendor in this run: the records-dropping run needs one (--vendors http).\n');
    process.exitCode = cooperative;
    return;
  }
  process.stdout.write(`\nNow the same run with the ${lastVendor} vendor dropping records (a vendor that only excludes itself):\n\n`);
  const dropping = await runOnce({ ...options, dropRecords: lastVendor, json: suffixed(options.json, 'dropped'), html: suffixed(options.html, 'dropped') });
  process.stdout.write(
    `\nWith records, each vendor inspected each flow once (exit ${cooperative}). Without them, a vendor cannot tell its own redirect from another's, ` +
      `so the flow comes back to a vendor that already inspected it (exit ${dropping}; 3 means the loop was detected, as expected).\n`,
  );
  process.exitCode = cooperative === 0 && dropping === 3 ? 0 : cooperative !== 0 ? cooperative : 1;
});

interface ConformanceCliOptions {
  vendor: VendorSpec;
  backend: BackendName;
  json?: string | undefined;
  html?: string | undefined;
  checks?: string[] | undefined;
  seed: number;
}

const candidateOf = (text: string): VendorSpec => {
  if (text.trim() === '') throw new InvalidArgumentError('an empty command');
  return text === 'tls' || text === 'http' ? { kind: text } : { kind: 'command', command: text };
};

const checkList = (text: string): string[] => {
  const names = text.split(',').map((n) => n.trim());
  for (const name of names) if (!CHECKS.some((c) => c.name === name)) throw new InvalidArgumentError(`'${name}' is not a check: ${CHECKS.map((c) => c.name).join(', ')}`);
  return names;
};

program
  .command('conformance')
  .description(`runs the conformance checks (version ${CONFORMANCE_VERSION}) on one vendor: one PASS/FAIL line per check, exit 0 only when all pass`)
  // Required: a CI script that forgot it must not pass by testing a reference vendor instead.
  .requiredOption('--vendor <command>', "the candidate: a command that starts a vendor built on core ({id} {priority} {ports} {backend} {failMode} are replaced, COPROXY_VENDOR_* set), or tls / http for a reference vendor", candidateOf)
  .addOption(new Option('--backend <name>', 'redirect layer').choices(['embedded', 'nftables']).default('embedded'))
  .option('--checks <list>', `a subset, by name: ${CHECKS.map((c) => c.name).join(', ')}`, checkList)
  .option('--json <file>', 'write the report as JSON (every check with its full run)')
  .option('--html <file>', 'write a self-contained HTML report with the hop diagram of each failing flow')
  .option('--seed <n>', 'seed for payloads and ports', integer(0, 2 ** 24), 1)
  .action(async (options: ConformanceCliOptions) => {
    process.stdout.write(`coproxy conformance ${CONFORMANCE_VERSION}: ${options.vendor.kind === 'command' ? `'${options.vendor.command ?? ''}'` : options.vendor.kind} on ${options.backend}\n`);
    const report = await runConformance({
      candidate: options.vendor,
      backend: options.backend,
      seed: options.seed,
      checks: options.checks,
      onCheck: (result) => process.stdout.write(`${verdictLine(result)}\n`),
    });
    const failed = report.checks.filter((c) => !c.passed).length;
    process.stdout.write(`${failed === 0 ? 'CONFORMS' : 'DOES NOT CONFORM'}: ${report.checks.length - failed} of ${report.checks.length} checks passed in ${(report.durationMs / 1000).toFixed(1)} s\n`);
    if (options.json !== undefined) fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
    if (options.html !== undefined) fs.writeFileSync(options.html, conformanceHtml(report));
    process.exitCode = report.passed ? 0 : 1;
  });

program
  .command('clients')
  .description('real clients (curl, Python urllib, headless Chromium) through the vendors on nftables (root), each flow compared byte for byte with the same client without vendors')
  .option('--vendors <list>', 'built-in vendors in start order; default tls,http', vendorList)
  .option('--vendor <command>', 'any vendor built on core (as for run)', vendorCommand)
  .option('--clients <list>', 'a subset of curl, python-urllib, chromium', (text: string) => {
    const names = text.split(',').map((n) => n.trim());
    for (const name of names) if (name !== 'curl' && name !== 'python-urllib' && name !== 'chromium') throw new InvalidArgumentError(`'${name}' is not a client: curl, python-urllib or chromium`);
    return names as RealClient[];
  })
  .option('--json <file>', 'write the report as JSON')
  .action(async (options: { json?: string; clients?: RealClient[] }) => {
    process.stdout.write(`coproxy testbed, real clients: ${vendorsOf().map(vendorName).join(' + ')} on nftables\n`);
    const report = await runRealClients({ vendors: vendorsOf(), clients: options.clients });
    for (const flow of report.flows) process.stdout.write(`${realFlowLine(flow)}\n`);
    for (const note of report.notes) process.stdout.write(`  note: ${note}\n`);
    if (options.json !== undefined) fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
    process.exitCode = report.passed ? 0 : 1;
  });

function suffixed(file: string | undefined, suffix: string): string | undefined {
  if (file === undefined) return undefined;
  const dot = file.lastIndexOf('.');
  return dot <= 0 ? `${file}-${suffix}` : `${file.slice(0, dot)}-${suffix}${file.slice(dot)}`;
}

async function runOnce(options: RunOptions): Promise<number> {
  const scenario: ScenarioOptions = {
    backend: options.backend,
    vendors: vendorsOf(),
    flows: options.flows,
    concurrency: options.concurrency,
    seed: options.seed,
    dropRecords: options.dropRecords,
    originPortBase: options.originPortBase,
    ...(options.udp === true && { shape: { kinds: UDP_KINDS } }),
    onProgress: progressBar(options.flows),
  };
  process.stdout.write(`coproxy testbed: ${vendorsOf().map(vendorName).join(' + ')} on ${options.backend}, ${options.flows} flows${options.dropRecords === undefined ? '' : `, ${options.dropRecords} dropping records`}\n`);
  let report: Report;
  try {
    report = await runScenario(scenario);
  } catch (error) {
    process.stderr.write(`\ncoproxy-testbed: ${(error as Error).message}\n`);
    return 1;
  }
  process.stdout.write(`\n${summary(report)}\n`);
  if (options.json !== undefined) fs.writeFileSync(options.json, `${JSON.stringify(report, null, 2)}\n`);
  if (options.html !== undefined) fs.writeFileSync(options.html, html(report));
  return report.exitCode;
}

function progressBar(total: number): (done: number) => void {
  const tty = process.stdout.isTTY;
  let last = -1;
  return (done) => {
    if (tty) {
      const width = 30;
      const filled = Math.round((done / total) * width);
      process.stdout.write(`\r  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} flows`);
    } else {
      const step = Math.floor((done / total) * 4);
      if (step !== last || done === total) process.stdout.write(`  ${done}/${total} flows\n`);
      last = step;
    }
  };
}

process.once('SIGINT', () => {
  process.stderr.write('\ncoproxy-testbed: interrupted, stopping everything\n');
  process.exitCode = 1;
  killAll(); // the run's promises then settle and its clean-up (namespace, files) runs
});

program.parseAsync().catch((error: unknown) => {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
  process.stderr.write(`coproxy-testbed: ${String(error)}\n`);
  process.exit(1);
});
