import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LogFollower } from './event-log.js';
import { ORIGIN_NAME, REAL_FLOWS, type RealClient, type RealFlow, type RealOriginMessage, type RealOriginRequest, uploadBytes } from './real-flows.js';
import {
  type Acceptance,
  type InNs,
  type VendorInfo,
  type VendorSpec,
  NETNS_ADDRESS,
  adopt,
  groups,
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

export async function runRealClients(options: { readonly vendors: readonly (VendorSpec | 'tls' | 'http')[]; readonly clients?: readonly RealClient[] | undefined }): Promise<RealClientsReport> {
  const started = Date.now();
  const notes: string[] = [];
  const flows: RealFlow[] = REAL_FLOWS.map((flow, index) => ({ ...flow, index, port: FIRST_PORT + index })).filter((flow) => options.clients?.includes(flow.client) ?? true);
  const vendors = assignVendors({ vendors: options.vendors, seed: 1 });
  const direct = await runOnce(flows, [], notes);
  const inspected = await runOnce(flows, vendors, notes);
  const order = [...vendors].sort((a, b) => a.priority - b.priority || (a.id < b.id ? -1 : 1)).map((v) => v.id);
  const results = flows.map((flow): RealFlowResult => {
    const a = direct.outcomes[flows.indexOf(flow)]!;
    const b = inspected.outcomes[flows.indexOf(flow)]!;
    const hops = [...inspected.acceptances.filter((h) => h.port === flow.port)].sort((x, y) => x.redirectedBy.length - y.redirectedBy.length);
    const problems: string[] = [];
    if (!a.ok) problems.push(`without vendors the client failed: ${a.error ?? ''}`);
    if (!b.ok) problems.push(`through the vendors the client failed: ${b.error ?? ''}`);
    if (a.ok && b.ok && a.received !== b.received) problems.push(`the client got other bytes than without vendors (${b.receivedBytes} against ${a.receivedBytes})`);
    const browser = flow.client === 'chromium';
    if (browser) {
      // A page is several requests (page, script, fetch, result, WebSocket messages, perhaps
      // a favicon) on connections the browser chooses: the same requests, with the same
      // header lines and bodies, each run (the WebSocket handshake's random key aside: its
      // messages are compared instead).
      const requests = (run: typeof direct): string[] =>
        run.requests.filter((r) => r.port === flow.port && r.url !== '/favicon.ico').map((r) => `${r.method} ${r.url} ${r.head} ${r.body}`).sort();
      const before = requests(direct);
      const after = requests(inspected);
      if (before.join('|') !== after.join('|')) problems.push(`the origin received other requests than without vendors: [${after.map((r) => r.split(' ').slice(0, 2).join(' ')).join(', ')}]`);
    } else if (b.originRequests !== 1) problems.push(`the origin saw ${b.originRequests} requests through the vendors, expected 1`);
    if (!browser && a.origin !== undefined && b.origin !== undefined) {
      if (a.origin.head !== b.origin.head) problems.push('the origin received other header lines than without vendors');
      if (a.origin.body !== b.origin.body) problems.push(`the origin received another body than without vendors (${b.origin.bodyBytes} against ${a.origin.bodyBytes} bytes)`);
    }
    // Each connection of the flow crosses each vendor once, in order: the same number of
    // acceptances per vendor (one per connection; one in all but a browser's flows), and the
    // records each saw are those of the vendors before it.
    // A browser also opens spare connections that may carry no byte before it is stopped; a
    // vendor that reads first bytes before dialing on never passes those on, so along a
    // browser's chain the counts may only fall, never rise (a rise would be a vendor
    // accepting a connection twice), and the last vendor must have carried the page.
    const perVendor = order.map((id) => hops.filter((h) => h.vendor === id).length);
    const fair = browser ? perVendor.every((n, i) => n >= 1 && (i === 0 || n <= perVendor[i - 1]!)) : perVendor.every((n) => n === 1);
    if (!fair) problems.push(`accepted ${order.map((id, i) => `${perVendor[i]!}× by ${id}`).join(', ')}: expected ${browser ? 'no more by a vendor than by the one before it' : 'once by each'}`);
    for (const hop of hops) {
      const position = order.indexOf(hop.vendor);
      const expected = order.slice(0, position + 1);
      if (hop.redirectedBy.join('>') !== expected.join('>')) problems.push(`${hop.vendor} saw records [${hop.redirectedBy.join(', ')}], expected [${expected.join(', ')}]`);
    }
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
  const connections = result.flow.client === 'chromium' ? ` (${result.hops.filter((h) => h.vendor === result.hops.at(-1)?.vendor).length} connections through all)` : '';
  return `PASS ${name}: the same ${result.flow.client === 'chromium' ? 'page result' : `${result.inspected.receivedBytes} bytes`} as without vendors, through ${[...new Set(result.hops.map((h) => h.vendor))].join(' → ') || 'no vendor'}${connections}`;
}

async function runOnce(flows: readonly RealFlow[], vendors: readonly VendorInfo[], notes: string[]): Promise<{ outcomes: RealClientOutcome[]; acceptances: Acceptance[]; requests: RealOriginRequest[] }> {
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
    const home = flows.some((f) => f.client === 'chromium') ? await browserHome(tmp, origin.caCert) : undefined;
    const outcomes: Omit<RealClientOutcome, 'origin' | 'originRequests'>[] = [];
    for (const flow of flows) outcomes.push(await runClient(inNs, tmp, flow, origin.child, origin.caCert, home));
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
      requests,
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

/**
 * A HOME whose NSS database (where Chromium on Linux reads the roots a user trusts) trusts
 * the run's origin CA for TLS servers, and nothing else of the machine's user.
 */
async function browserHome(tmp: string, caCert: string): Promise<string> {
  const home = path.join(tmp, 'home');
  const nssdb = path.join(home, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  const certutil = (args: string[]): Promise<void> =>
    new Promise((resolve, reject) => execFile('certutil', ['-d', `sql:${nssdb}`, ...args], (error, _out, stderr) => (error === null ? resolve() : reject(new Error(`certutil: ${stderr.trim() || error.message} (apt-get install libnss3-tools)`)))));
  await certutil(['-N', '--empty-password']);
  await certutil(['-A', '-t', 'C,,', '-n', 'coproxy-testbed-origin', '-i', caCert]);
  return home;
}

/** Chromium's flags: headless, off the network but for the page, a profile of the run's own; the name maps to the origin. */
function chromiumArgs(tmp: string, flow: RealFlow, url: string): string[] {
  return [
    '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-quic', `--user-data-dir=${path.join(tmp, `profile-${flow.index}`)}`, `--host-resolver-rules=MAP ${ORIGIN_NAME} ${NETNS_ADDRESS}`,
    url,
  ];
}

/** What the page's script posted: both answers whole (the fetch's 256 KiB, the WebSocket echo). */
export function pageResult(text: string): { text: string; ok: boolean; error?: string } {
  let result: { fetch?: { bytes?: number }; websocket?: { echoedIntact?: boolean }; error?: string };
  try {
    result = JSON.parse(text) as typeof result;
  } catch {
    return { text, ok: false, error: `the page posted no JSON: ${text.slice(0, 80)}` };
  }
  if (result.error !== undefined) return { text, ok: false, error: `the page's script: ${result.error}` };
  if (result.fetch?.bytes !== 256 * 1024 || result.websocket?.echoedIntact !== true) return { text, ok: false, error: `the page got ${text}` };
  return { text, ok: true };
}

/** Runs the flow's client program once; what it wrote out is the answer it got. */
function runClient(inNs: InNs, tmp: string, flow: RealFlow, origin: ChildProcess, caCert: string, home: string | undefined): Promise<Omit<RealClientOutcome, 'origin' | 'originRequests'>> {
  const out = path.join(tmp, `out-${flow.index}`);
  const body = path.join(tmp, `body-${flow.index}`);
  if (flow.method === 'POST') fs.writeFileSync(body, uploadBytes(flow));
  const url = `${flow.scheme}://${ORIGIN_NAME}:${flow.port}${flow.path}`;
  if (flow.client === 'chromium') {
    const [command, args] = inNs('chromium', chromiumArgs(tmp, flow, url));
    // Chromium and its helper processes in a group of their own, stopped together once the
    // page's script has posted its result (or after 25 s).
    const child = spawn(command, args, { env: { ...clientEnv(), HOME: home ?? '' }, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    adopt(inNs, child);
    groups.add(child);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => void (stderr = (stderr + chunk.toString()).slice(-2048)));
    return new Promise((resolve) => {
      const done = (outcome: Omit<RealClientOutcome, 'origin' | 'originRequests'>): void => {
        clearTimeout(timer);
        origin.off('message', onMessage);
        stop(child, 'SIGKILL');
        resolve(outcome);
      };
      const onMessage = (message: RealOriginMessage): void => {
        if (!('page' in message) || message.page.port !== flow.port) return;
        const page = pageResult(message.page.text);
        done(page.ok ? { ok: true, received: sha256(Buffer.from(page.text)), receivedBytes: page.text.length } : { ok: false, error: page.error, received: '', receivedBytes: 0 });
      };
      const timer = setTimeout(() => done({ ok: false, error: `no result from the page within 25 s: ${stderr.trim().split('\n').at(-1) ?? ''}`, received: '', receivedBytes: 0 }), 25_000);
      origin.on('message', onMessage);
    });
  }
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
