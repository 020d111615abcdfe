import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LogFollower } from './event-log.js';
import { ORIGIN_NAME, REAL_FLOWS, type RealFlow, type RealOriginMessage, type RealOriginRequest, uploadBytes } from './real-flows.js';
import {
  type Acceptance,
  type InNs,
  type VendorInfo,
  type VendorSpec,
  NETNS_ADDRESS,
  adopt,
  assignVendors,
  createNamespace,
  exited,
  placeOf,
  removeNamespace,
  startVendor,
  stop,
} from './scenario.js';
import { portList } from './ports.js';

/**
 * Real clients as scenario clients, on the nftables backend: unmodified curl and Python's
 * urllib, each flow run twice in namespaces of their own, once without vendors and once
 * through them, and the bytes compared: what the client got, and what the origin received
 * (its header lines as sent, and the body). Through the vendors, each must also accept each
 * flow once, in priority order, as in every testbed run.
 */
export interface RealClientOutcome {
  readonly ok: boolean;
  readonly error?: string | undefined;
  /** SHA-256 and size of what the client wrote out: the response body. */
  readonly received: string;
  readonly receivedBytes: number;
  /** What the origin received for this flow; undefined when it saw nothing. */
  readonly origin: RealOriginRequest | undefined;
  /** Requests the origin saw on the flow's port. */
  readonly originRequests: number;
}

export interface RealFlowResult {
  readonly flow: RealFlow;
  readonly direct: RealClientOutcome;
  readonly inspected: RealClientOutcome;
  readonly hops: readonly Acceptance[];
  readonly problems: readonly string[];
}

export interface RealClientsReport {
  readonly backend: 'nftables';
  readonly startedAt: string;
  readonly durationMs: number;
  readonly vendors: readonly VendorInfo[];
  readonly flows: readonly RealFlowResult[];
  readonly passed: boolean;
  readonly notes: readonly string[];
}

const here = path.dirname(fileURLToPath(import.meta.url));
/** Ports in the namespace, which is the run's own: nothing else listens there, and they are below Linux's ephemeral range. */
const FIRST_PORT = 20_000;
const CLIENT_TIMEOUT_S = 30;

const PYTHON_CLIENT = `
import sys, ssl, urllib.request
url, out, body, ca = sys.argv[1:5]
data = open(body, 'rb').read() if body else None
headers = {'Content-Type': 'application/octet-stream'} if data is not None else {}
request = urllib.request.Request(url, data=data, method='POST' if data is not None else 'GET', headers=headers)
with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=ca), timeout=${CLIENT_TIMEOUT_S}) as response:
    open(out, 'wb').write(response.read())
`;

/** The clients' environment: no proxy variables, which curl and urllib would honour. */
function clientEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (/^(https?|all|no)_proxy$/i.test(name)) delete env[name];
  return env;
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

export async function runRealClients(options: { readonly vendors: readonly (VendorSpec | 'tls' | 'http')[] }): Promise<RealClientsReport> {
  const started = Date.now();
  const notes: string[] = [];
  const flows: RealFlow[] = REAL_FLOWS.map((flow, index) => ({ ...flow, index, port: FIRST_PORT + index }));
  const vendors = assignVendors({ vendors: options.vendors, seed: 1 });
  const direct = await runOnce(flows, [], notes);
  const inspected = await runOnce(flows, vendors, notes);
  const order = [...vendors].sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1)).map((v) => v.id);
  const results = flows.map((flow): RealFlowResult => {
    const a = direct.outcomes[flow.index]!;
    const b = inspected.outcomes[flow.index]!;
    const hops = [...inspected.acceptances.filter((h) => h.port === flow.port)].sort((x, y) => x.redirectedBy.length - y.redirectedBy.length);
    const problems: string[] = [];
    if (!a.ok) problems.push(`without vendors the client failed: ${a.error ?? ''}`);
    if (!b.ok) problems.push(`through the vendors the client failed: ${b.error ?? ''}`);
    if (a.ok && b.ok && a.received !== b.received) problems.push(`the client got other bytes than without vendors (${b.receivedBytes} against ${a.receivedBytes})`);
    if (b.originRequests !== 1) problems.push(`the origin saw ${b.originRequests} requests through the vendors, expected 1`);
    if (a.origin !== undefined && b.origin !== undefined) {
      if (a.origin.head !== b.origin.head) problems.push('the origin received other header lines than without vendors');
      if (a.origin.body !== b.origin.body) problems.push(`the origin received another body than without vendors (${b.origin.bodyBytes} against ${a.origin.bodyBytes} bytes)`);
    }
    const seen = hops.map((h) => h.vendor);
    if (seen.join('>') !== order.join('>')) problems.push(`accepted by [${seen.join(', ')}], expected [${order.join(', ')}] once each`);
    hops.forEach((hop, i) => {
      const expected = order.slice(0, i + 1);
      if (hop.redirectedBy.join('>') !== expected.join('>')) problems.push(`${hop.vendor} saw records [${hop.redirectedBy.join(', ')}], expected [${expected.join(', ')}]`);
    });
    return { flow, direct: a, inspected: b, hops, problems };
  });
  return {
    backend: 'nftables',
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    vendors,
    flows: results,
    passed: results.every((r) => r.problems.length === 0),
    notes,
  };
}

/** `PASS curl GET https /data/2048: …` or `FAIL …: reason`. */
export function realFlowLine(result: RealFlowResult): string {
  const { flow } = result;
  const name = `${flow.client} ${flow.method} ${flow.scheme} ${flow.path}${flow.uploadBytes > 0 ? ` (${flow.uploadBytes} bytes up)` : ''}`;
  if (result.problems.length > 0) return `FAIL ${name}: ${result.problems.join('; ')}, flow ${flow.index}`;
  return `PASS ${name}: the same ${result.inspected.receivedBytes} bytes as without vendors, through ${result.hops.map((h) => h.vendor).join(' → ') || 'no vendor'}`;
}

async function runOnce(flows: readonly RealFlow[], vendors: readonly VendorInfo[], notes: string[]): Promise<{ outcomes: RealClientOutcome[]; acceptances: Acceptance[] }> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-'));
  const netns = createNamespace();
  // `ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts: the clients resolve the
  // origin's name as on any host, and verify its certificate for that name.
  const etc = path.join('/etc/netns', netns);
  const inNs = placeOf(netns);
  const followers: LogFollower[] = [];
  const acceptances: Acceptance[] = [];
  try {
    fs.mkdirSync(etc, { recursive: true });
    fs.writeFileSync(path.join(etc, 'hosts'), `127.0.0.1 localhost\n${NETNS_ADDRESS} ${ORIGIN_NAME}\n`);
    const origin = await startOrigin(inNs, tmp, flows);
    const range = portList(flows.map((f) => f.port));
    const env = { ...process.env, COPROXY_REGISTRY: path.join(tmp, 'registry') };
    const processes: ChildProcess[] = [];
    for (const vendor of vendors) {
      const log = path.join(tmp, `events-${vendor.id}.jsonl`);
      processes.push(await startVendor(inNs, vendor, { range, backend: 'nftables', env, log, followers, notes, onAccepted: (a) => acceptances.push(a) }));
    }
    const outcomes: Omit<RealClientOutcome, 'origin' | 'originRequests'>[] = [];
    for (const flow of flows) outcomes.push(await runClient(inNs, tmp, flow, origin.caCert));
    const requests = await askOrigin(origin.child);
    for (const child of processes) stop(child, 'SIGTERM');
    await Promise.all(processes.map(exited));
    for (const follower of followers.splice(0)) follower.stop();
    return {
      outcomes: flows.map((flow, i) => {
        const seen = requests.filter((r) => r.port === flow.port);
        return { ...outcomes[i]!, origin: seen[0], originRequests: seen.length };
      }),
      acceptances,
    };
  } finally {
    for (const child of inNs.children) stop(child, 'SIGKILL');
    for (const follower of followers) follower.stop();
    removeNamespace(netns);
    fs.rmSync(etc, { recursive: true, force: true });
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function startOrigin(inNs: InNs, tmp: string, flows: readonly RealFlow[]): Promise<{ child: ChildProcess; caCert: string }> {
  const argsFile = path.join(tmp, 'real-origin-args.json');
  fs.writeFileSync(argsFile, JSON.stringify({ host: NETNS_ADDRESS, flows, caDir: path.join(tmp, 'origin-ca') }), { mode: 0o600 });
  const [command, args] = inNs(process.execPath, [path.join(here, 'real-origin.js'), argsFile]);
  const child = spawn(command, args, { stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
  adopt(inNs, child);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the origin was not ready within 20 s')), 20_000);
    child.on('message', (message: RealOriginMessage) => {
      if ('ready' in message) {
        clearTimeout(timer);
        resolve({ child, caCert: message.caCert });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the origin exited with ${code}: ${stderr.trim()}`));
    });
  });
}

function askOrigin(origin: ChildProcess): Promise<RealOriginRequest[]> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the origin did not report within 10 s')), 10_000);
    origin.on('message', (message: RealOriginMessage) => {
      if (!('requests' in message)) return;
      clearTimeout(timer);
      resolve(message.requests);
    });
    origin.send('report');
  });
}

/** Runs the flow's client program once; what it wrote out is the answer it got. */
function runClient(inNs: InNs, tmp: string, flow: RealFlow, caCert: string): Promise<Omit<RealClientOutcome, 'origin' | 'originRequests'>> {
  const out = path.join(tmp, `out-${flow.index}`);
  const body = path.join(tmp, `body-${flow.index}`);
  if (flow.method === 'POST') fs.writeFileSync(body, uploadBytes(flow));
  const url = `${flow.scheme}://${ORIGIN_NAME}:${flow.port}${flow.path}`;
  const argv =
    flow.client === 'curl'
      ? ['curl', '-sS', '--fail', '--max-time', String(CLIENT_TIMEOUT_S), '--cacert', caCert, '-o', out,
          ...(flow.method === 'POST' ? ['--data-binary', `@${body}`, '-H', 'content-type: application/octet-stream'] : []), url]
      : ['python3', '-c', PYTHON_CLIENT, url, out, flow.method === 'POST' ? body : '', caCert];
  const [command, args] = inNs(argv[0]!, argv.slice(1));
  return new Promise((resolve) => {
    execFile(command, args, { env: clientEnv(), timeout: (CLIENT_TIMEOUT_S + 5) * 1000 }, (error, _stdout, stderr) => {
      // The last line says why (curl's one line, Python's exception after its traceback).
      const why = stderr.trim().split('\n').at(-1) ?? '';
      if (error !== null) return resolve({ ok: false, error: why || error.message, received: '', receivedBytes: 0 });
      const bytes = fs.readFileSync(out);
      resolve({ ok: true, received: sha256(bytes), receivedBytes: bytes.length });
    });
  });
}
