import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { stopProcess, waitUntil } from '@coproxy/bench-kit';
import type { BackendName } from '@coproxy/core';
import type { Namespace } from './namespace.js';
import { H2_PORT, originCertificate } from './nginx-origin.js';

/** What the bench hands every configuration. */
export interface BenchContext {
  readonly ns: Namespace;
  /** The run's temporary directory (world-readable: the peers read their files as their own uids). */
  readonly dir: string;
  /** Embedded backend: the registry directory the vendors and the Node clients share. */
  readonly registry: string;
  /** Run the coproxy vendors under `node --cpu-prof`, writing here (one subdirectory per vendor). */
  readonly cpuProfDir: string | undefined;
}

/** A proxy's own count of what went through it. Absent fields: the proxy does not count that. */
export interface ProxyCounts {
  /** Client connections it accepted. */
  readonly connections?: number;
  /** HTTP requests it parsed (or TLS handshakes it inspected). */
  readonly requests?: number;
  /** coproxy-http: accepted flows whose records held two redirects (another vendor's, then its own). */
  readonly secondHop?: number;
  /** coproxy vendors: V8 heap used, bytes (their `<prefix>_heap_used_bytes` gauge). */
  readonly heapUsedBytes?: number;
}

export interface RunningProxy {
  readonly name: string;
  readonly pid: number;
  /** Where the proxy's count comes from, for the report. */
  readonly countSource: string;
  /** Whether `requests` counts HTTP requests (an HTTP-aware proxy) rather than handshakes. */
  readonly countsHttp: boolean;
  /** Whether it decrypts the TLS it is given (bump, mitmproxy) and counts the requests inside (then `requests` counts them on TLS rows too). */
  readonly decryptsTls: boolean;
  counts(): Promise<ProxyCounts>;
  stop(): Promise<void>;
}

/** `h2`: HTTPS on the origin's HTTP/2 port, keep-alive load by h2load, new connections by wrk. */
export type Section = 'http' | 'https' | 'node' | 'h2';

export interface RowSpec {
  readonly key: string;
  readonly label: string;
  readonly section: Section;
}

export interface Started {
  readonly proxies: readonly RunningProxy[];
  /** The nft table the operator wrote for this configuration (peers), with a counter on its redirect rule. */
  readonly operatorTable: string | undefined;
  /** Whether the clients must dial through core's connect() (embedded backend). */
  readonly embedded: boolean;
  /** Processes that run as their own uid, each excluded from its own redirect rule. */
  readonly uidExclusions: number;
}

export interface Configuration {
  readonly key: string;
  readonly label: string;
  readonly rows: readonly RowSpec[];
  /** Operator's view: what setting this configuration up takes, for the report. */
  readonly setup: string;
  /** Run as the soak (rounds of short flows, memory read after each) instead of the rows' load runs; its one row says what to dial. */
  readonly soak?: boolean;
  start(ctx: BenchContext): Promise<Started>;
}

const require = createRequire(import.meta.url);
const vendorCli = {
  http: path.join(path.dirname(require.resolve('@coproxy/proxy-http/package.json')), 'dist/cli.js'),
  tls: path.join(path.dirname(require.resolve('@coproxy/proxy-tls/package.json')), 'dist/cli.js'),
} as const;

const READY_TIMEOUT_MS = 20_000;
/** mitmproxy runs as this uid, which has no passwd entry: an unprivileged uid of its own. */
const MITMPROXY_UID = 64_123;
/** The records-off chain's vendors run as these uids (no passwd entries), as peers do, each excluded by hand. */
const RECORDS_OFF_UIDS = { tls: 64_124, http: 64_125 } as const;
const PORTS = { squid: 3129, squidManager: 3128, mitmproxy: 18_080, mitmproxyH2: 18_443, haproxy: 10_080, httpMetrics: 9464, tlsMetrics: 9465 } as const;

export function uidOf(user: string): number {
  const line = execFileSync('getent', ['passwd', user], { encoding: 'utf8' }).trim();
  const uid = Number(line.split(':')[2]);
  if (!Number.isInteger(uid)) throw new Error(`no uid for user ${user}`);
  return uid;
}

/** An HTTP GET inside the namespace (curl, bounded); the body as text. */
export function getInNamespace(ns: Namespace, url: string): string {
  return ns.exec('curl', ['-sS', '--fail', '--max-time', '5', '--noproxy', '*', url]);
}

/** `name{labels} value` lines of a Prometheus text page, summed by name. */
export function prometheusSums(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null) continue;
    const key = m[1] === 'coproxy_http_records_depth_bucket' ? `${m[1]}${m[2] ?? ''}` : m[1]!;
    sums.set(key, (sums.get(key) ?? 0) + Number(m[3]));
  }
  return sums;
}

/** The operator's rule set for a peer: its own uid excluded, then the redirect (with a counter, for the path check). */
function operatorRules(table: string, uid: number, ports: readonly number[], to: number): string {
  return [
    `table inet ${table} {`,
    '  chain output {',
    '    type nat hook output priority -100; policy accept;',
    `    meta skuid ${uid} return`,
    `    tcp dport { ${ports.join(', ')} } counter redirect to :${to}`,
    '  }',
    '}',
    '',
  ].join('\n');
}

function installRules(ns: Namespace, rules: string): void {
  ns.exec('nft', ['-f', '-'], rules);
}

function listening(ns: Namespace, port: number): boolean {
  return ns.exec('ss', ['-Hltn', `sport = :${port}`]).trim() !== '';
}

function logFile(ctx: BenchContext, name: string): string {
  return path.join(ctx.dir, `${name}.log`);
}

/** The last lines of a process's log, for an error message. */
export function tail(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function started(what: string, log: string, ready: Promise<void>): Promise<void> {
  try {
    await ready;
  } catch (error) {
    throw new Error(`${what} did not start: ${(error as Error).message}\n${tail(log)}`, { cause: error });
  }
}

// ---------------------------------------------------------------------------------------
// Peers

async function startSquid(ctx: BenchContext): Promise<RunningProxy> {
  const dir = path.join(ctx.dir, 'squid');
  fs.mkdirSync(dir);
  const uid = uidOf('proxy');
  fs.chownSync(dir, uid, uid);
  const conf = path.join(dir, 'squid.conf');
  // Intercept port plus a plain one for the cache manager; no caching (an origin relay,
  // like every other row), no per-request log (none of the proxies logs requests here).
  fs.writeFileSync(
    conf,
    [
      `http_port 127.0.0.1:${PORTS.squidManager}`,
      `http_port 127.0.0.1:${PORTS.squid} intercept`,
      'http_access allow localhost manager',
      'http_access allow all',
      'cache deny all',
      'access_log none',
      'cache_store_log none',
      `cache_log ${path.join(dir, 'cache.log')}`,
      `pid_filename ${path.join(dir, 'squid.pid')}`,
      `coredump_dir ${dir}`,
      'pinger_enable off',
      'max_filedescriptors 16384',
      'cache_effective_user proxy',
      'shutdown_lifetime 1 seconds',
      '',
    ].join('\n'),
  );
  const log = logFile(ctx, 'squid');
  // -N: one process, in the foreground; it drops to cache_effective_user (proxy) itself.
  const child = ctx.ns.spawn('squid', ['-N', '-f', conf], { output: { file: log } });
  const manager = `http://127.0.0.1:${PORTS.squidManager}/squid-internal-mgr/counters`;
  await started('squid', path.join(dir, 'cache.log'), waitUntil('squid', () => getInNamespace(ctx.ns, manager).includes('client_http.requests'), READY_TIMEOUT_MS, child));
  return {
    name: 'squid',
    pid: child.pid!,
    countSource: 'cache manager counters (client_http.requests)',
    countsHttp: true,
    decryptsTls: false,
    counts: () => {
      const text = getInNamespace(ctx.ns, manager);
      // The manager's own request is counted too: one per reading, the same before and after.
      return Promise.resolve({ requests: Number(/^client_http\.requests = (\d+)/m.exec(text)?.[1] ?? NaN) });
    },
    stop: () => stopProcess(child),
  };
}

/** mitmproxy addon: counts client connections and requests into a JSON file, 4 times a second. */
const MITM_COUNTER = `
import json, os, threading, time

class Count:
    def __init__(self):
        self.connections = 0
        self.requests = 0
        self.path = os.environ["COMPARE_COUNTS"]

    def running(self):
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            self.write()
            time.sleep(0.25)

    def write(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"connections": self.connections, "requests": self.requests}, f)
        os.replace(tmp, self.path)

    def client_connected(self, client):
        self.connections += 1

    def requestheaders(self, flow):
        self.requests += 1

    def done(self):
        self.write()

addons = [Count()]
`;

/** mitmproxy in transparent mode on `port`; `tls`: it intercepts TLS to the origin (it speaks h2 on both legs), trusting the origin's certificate. */
async function startMitmproxy(ctx: BenchContext, port: number = PORTS.mitmproxy, tls = false): Promise<RunningProxy> {
  const dir = path.join(ctx.dir, tls ? 'mitmproxy-tls' : 'mitmproxy');
  fs.mkdirSync(dir);
  fs.chownSync(dir, MITMPROXY_UID, MITMPROXY_UID);
  const addon = path.join(dir, 'count.py');
  fs.writeFileSync(addon, MITM_COUNTER);
  const countsFile = path.join(dir, 'counts.json');
  const log = logFile(ctx, 'mitmproxy');
  const child = ctx.ns.spawn(
    'mitmdump',
    [
      '--mode', 'transparent',
      '--listen-host', '127.0.0.1',
      '--listen-port', String(port),
      '--set', `confdir=${dir}`,
      // Verifies the origin against its certificate, as coproxy-tls's bump does with --origin-ca.
      ...(tls ? ['--set', `ssl_verify_upstream_trusted_ca=${originCertificate(ctx.dir)}`] : []),
      // Streams bodies over 1 MB instead of holding each whole in memory: what an operator
      // sets for downloads (mitmproxy's default buffers the 64 MiB body first).
      '--set', 'stream_large_bodies=1m',
      '-q',
      '-s', addon,
    ],
    { output: { file: log }, uid: MITMPROXY_UID, env: { ...process.env, HOME: dir, COMPARE_COUNTS: countsFile } },
  );
  await started('mitmproxy', log, waitUntil('mitmproxy', () => listening(ctx.ns, port) && fs.existsSync(countsFile), READY_TIMEOUT_MS, child));
  return {
    name: 'mitmproxy',
    pid: child.pid!,
    countSource: 'counting addon (client_connected, requestheaders)',
    countsHttp: true,
    decryptsTls: tls,
    counts: async () => {
      // The addon writes every 250 ms.
      await new Promise((resolve) => setTimeout(resolve, 600));
      const counts = JSON.parse(fs.readFileSync(countsFile, 'utf8')) as { connections: number; requests: number };
      return { connections: counts.connections, requests: counts.requests };
    },
    stop: () => stopProcess(child, 5000, 'SIGINT'),
  };
}

async function startHaproxy(ctx: BenchContext): Promise<RunningProxy> {
  const dir = path.join(ctx.dir, 'haproxy');
  fs.mkdirSync(dir);
  const socket = path.join(dir, 'stats.sock');
  const conf = path.join(dir, 'haproxy.cfg');
  // A layer-4 relay to each connection's original destination (`0.0.0.0:0`: HAProxy reads
  // it with SO_ORIGINAL_DST after the redirect), as a transparent relay is configured.
  fs.writeFileSync(
    conf,
    [
      'global',
      '  maxconn 8000',
      '  user haproxy',
      '  group haproxy',
      `  stats socket ${socket} mode 600 level admin`,
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 120s',
      '  timeout server 120s',
      'frontend relay',
      `  bind 127.0.0.1:${PORTS.haproxy}`,
      '  default_backend original_destination',
      'backend original_destination',
      '  server s 0.0.0.0:0',
      '',
    ].join('\n'),
  );
  const log = logFile(ctx, 'haproxy');
  const child = ctx.ns.spawn('haproxy', ['-db', '-f', conf], { output: { file: log } });
  await started('haproxy', log, waitUntil('haproxy', () => fs.existsSync(socket) && listening(ctx.ns, PORTS.haproxy), READY_TIMEOUT_MS, child));
  return {
    name: 'haproxy',
    pid: child.pid!,
    countSource: 'stats socket (frontend stot: sessions)',
    countsHttp: false,
    decryptsTls: false,
    counts: async () => {
      const csv = await unixRequest(socket, 'show stat\n');
      const frontend = csv.split('\n').find((line) => line.startsWith('relay,FRONTEND,'));
      return { connections: Number(frontend?.split(',')[7] ?? NaN) };
    },
    stop: () => stopProcess(child), // SIGTERM: HAProxy's immediate stop
  };
}

function unixRequest(socketPath: string, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let text = '';
    const timer = setTimeout(() => socket.destroy(new Error(`${socketPath}: no answer within 5 s`)), 5000);
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.once('end', () => {
      clearTimeout(timer);
      resolve(text);
    });
    socket.end(request);
  });
}

// ---------------------------------------------------------------------------------------
// coproxy vendors

interface VendorSpec {
  readonly kind: 'http' | 'tls';
  readonly id: string;
  readonly priority: number;
  readonly ports: string;
  readonly backend: BackendName;
  /** coproxy-tls: bump every hello (`default: bump`), trusting the origin's certificate (`--origin-ca`); its CA in the run's directory. */
  readonly bump?: boolean;
  /** Records off (`--drop-records`, `--fail-mode closed` so that its table can be removed), run as this uid with CAP_NET_ADMIN only (to set socket marks and install its table). */
  readonly recordsOff?: { readonly uid: number };
}

/** The policy file and CA directory of a bumping coproxy-tls, as an operator writes them. */
function bumpArgs(ctx: BenchContext, id: string): string[] {
  const policy = path.join(ctx.dir, `${id}-policy.json`);
  fs.writeFileSync(policy, `${JSON.stringify({ default: 'bump', rules: [] })}\n`);
  return ['--policy', policy, '--ca-dir', path.join(ctx.dir, `${id}-ca`), '--origin-ca', originCertificate(ctx.dir)];
}

/** A vendor through its published CLI, as an operator starts it; per-request logs off, metrics on. */
async function startVendor(ctx: BenchContext, spec: VendorSpec): Promise<RunningProxy> {
  const metricsPort = spec.kind === 'http' ? PORTS.httpMetrics : PORTS.tlsMetrics;
  const nodeFlags = ctx.cpuProfDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${path.join(ctx.cpuProfDir, spec.id)}`];
  const log = logFile(ctx, spec.id);
  const args = [
    ...nodeFlags,
    vendorCli[spec.kind],
    '--id', spec.id,
    '--priority', String(spec.priority),
    '--ports', spec.ports,
    '--backend', spec.backend,
    // `warn`: no line per exchange or connection, as the peers log no request either.
    '--log-level', 'warn',
    '--metrics', `127.0.0.1:${metricsPort}`,
    ...(spec.bump === true ? bumpArgs(ctx, spec.id) : []),
    // TCP only: the bench moves no UDP, and the peers intercept none, so coproxy-tls's
    // default UDP/443 rules and datagram listener would be rules with no counterpart.
    ...(spec.kind === 'tls' ? ['--udp-ports', 'none'] : []),
    ...(spec.recordsOff === undefined ? [] : ['--drop-records', '--fail-mode', 'closed']),
  ];
  const child = ctx.ns.spawn(process.execPath, args, {
    output: { file: log },
    env: { ...process.env, COPROXY_REGISTRY: ctx.registry },
    ...(spec.recordsOff !== undefined && { uid: spec.recordsOff.uid, capabilities: ['net_admin'] }),
  });
  const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  // Ready once its redirect is in place: the nft table has its rule, or the registry its entry.
  const installed = (): boolean =>
    spec.backend === 'nftables'
      ? ctx.ns.exec('nft', ['list', 'table', 'inet', `coproxy-${spec.id}`]).includes('redirect to')
      : fs.existsSync(path.join(ctx.registry, `${spec.id}.json`));
  await started(`coproxy-${spec.kind}`, log, waitUntil(`coproxy-${spec.kind}`, () => installed() && getInNamespace(ctx.ns, metricsUrl) !== '', READY_TIMEOUT_MS, child));
  const prefix = spec.kind === 'http' ? 'coproxy_http' : 'coproxy_tls';
  const bump = spec.bump === true;
  // A bumping coproxy-tls counts what it decrypted: one exchange per HTTP/1.1 request or HTTP/2 stream.
  const requestsMetric = spec.kind === 'http' ? `${prefix}_requests_total` : bump ? `${prefix}_bumped_exchanges_total` : `${prefix}_handshakes_total`;
  return {
    name: `coproxy-${spec.kind}${bump ? ' (bump)' : ''}`,
    pid: child.pid!,
    countSource: `Prometheus metrics (${prefix}_connections_total, ${requestsMetric})`,
    countsHttp: spec.kind === 'http' || bump,
    decryptsTls: bump,
    counts: () => {
      const sums = prometheusSums(getInNamespace(ctx.ns, metricsUrl));
      const depth = (le: string): number => sums.get(`coproxy_http_records_depth_bucket{le="${le}"}`) ?? 0;
      return Promise.resolve({
        connections: sums.get(`${prefix}_connections_total`) ?? 0,
        requests: sums.get(requestsMetric) ?? 0,
        ...(spec.kind === 'http' && { secondHop: depth('2') - depth('1') }),
        ...(sums.has(`${prefix}_heap_used_bytes`) && { heapUsedBytes: sums.get(`${prefix}_heap_used_bytes`)! }),
      });
    },
    // SIGTERM: the vendor removes its table or registry entry, and a CPU profile is written at exit.
    stop: () => stopProcess(child, 10_000),
  };
}

// ---------------------------------------------------------------------------------------
// The configurations, in the order they run

const peer = (
  key: string,
  label: string,
  user: string | number,
  ports: readonly number[],
  to: number,
  start: (ctx: BenchContext) => Promise<RunningProxy>,
  rows: readonly RowSpec[],
): Configuration => ({
  key,
  label,
  rows,
  setup: `the proxy as its own uid (${typeof user === 'number' ? `uid ${user}` : user}); 1 table, 2 rules: that uid returns, port ${ports.join('/')} redirected`,
  async start(ctx) {
    const proxy = await start(ctx);
    const uid = typeof user === 'number' ? user : uidOf(user);
    const table = `compare-${key}`;
    try {
      installRules(ctx.ns, operatorRules(table, uid, ports, to));
    } catch (error) {
      await proxy.stop();
      throw error;
    }
    return { proxies: [proxy], operatorTable: table, embedded: false, uidExclusions: 1 };
  },
});

const vendors = (key: string, label: string, specs: readonly VendorSpec[], rows: readonly RowSpec[]): Configuration => ({
  key,
  label,
  rows,
  setup:
    specs[0]!.backend === 'nftables'
      ? `${specs.map((s) => `coproxy-${s.kind} --backend nftables --ports ${s.ports}`).join(', then ')}; no rule written by hand, no uid excluded`
      : `${specs.map((s) => `coproxy-${s.kind} --backend embedded --ports ${s.ports}`).join(', then ')}; no kernel rule; the client dials through core's connect()`,
  async start(ctx) {
    const proxies: RunningProxy[] = [];
    try {
      for (const spec of specs) proxies.push(await startVendor(ctx, spec));
    } catch (error) {
      await Promise.all(proxies.map((p) => p.stop()));
      throw error;
    }
    return { proxies, operatorTable: undefined, embedded: specs[0]!.backend === 'embedded', uidExclusions: 0 };
  },
});

/**
 * The two vendors chained the way peers are chained today: records off (`--drop-records`),
 * each as its own uid, and the operator's rules by hand, every one returning for the uids
 * of the proxies after it. `--drop-records` alone is not enough: each vendor's own table
 * would still redirect (its records check returns only for flows whose mark carries its
 * bit, and with records dropped coproxy-http's onward flows carry its bit alone), so
 * coproxy-tls would take coproxy-http's onward flows back: the loop records prevent. No
 * vendor option leaves its table out, and a vendor only accepts flows to its `--ports`;
 * so the vendors start `--fail-mode closed` (whose tables, unlike fail-open ones, are not
 * `flags owner`: root may remove them), the bench reads each one's listener port from its
 * table, removes both tables, and writes the operator's table: its chains redirect ports
 * 80 and 443 to those listeners. The vendors still read each accepted socket's mark and
 * set their own bit on the onward one (the backend always does): what this takes out of
 * the path is the records' kernel rules and their propagation, not that per-flow work.
 */
const recordsOffChain = (): Configuration => {
  const specs: VendorSpec[] = [
    { kind: 'tls', id: 'compare-tls', priority: 10, ports: '80,443', backend: 'nftables', recordsOff: { uid: RECORDS_OFF_UIDS.tls } },
    { kind: 'http', id: 'compare-http', priority: 20, ports: '80,443', backend: 'nftables', recordsOff: { uid: RECORDS_OFF_UIDS.http } },
  ];
  const table = 'compare-records-off';
  return {
    key: 'chain-records-off',
    label: 'coproxy-tls → coproxy-http, records off (uid rules by hand)',
    rows: [
      { key: 'chain-records-off-http', label: 'coproxy-tls → coproxy-http, records off', section: 'http' },
      { key: 'chain-records-off-https', label: 'coproxy-tls → coproxy-http, records off', section: 'https' },
    ],
    setup:
      `coproxy-tls and coproxy-http --drop-records --fail-mode closed, each as its own uid (${RECORDS_OFF_UIDS.tls}, ${RECORDS_OFF_UIDS.http}) with CAP_NET_ADMIN; ` +
      'their own tables removed once they listen; 1 table by hand, 2 chains, 4 rules: coproxy-tls\'s returns for both uids, coproxy-http\'s for its own, ports 80/443 redirected',
    async start(ctx) {
      const proxies: RunningProxy[] = [];
      try {
        for (const spec of specs) proxies.push(await startVendor(ctx, spec));
        const [tlsPort, httpPort] = specs.map((spec) => listenerPort(ctx.ns, spec.id));
        const { tls, http } = RECORDS_OFF_UIDS;
        // One transaction: the vendors' tables out, the operator's in.
        installRules(
          ctx.ns,
          [
            ...specs.map((spec) => `delete table inet coproxy-${spec.id}`),
            `table inet ${table} {`,
            '  chain tls {',
            '    type nat hook output priority -100; policy accept;',
            `    meta skuid { ${tls}, ${http} } return`,
            `    tcp dport { 80, 443 } counter redirect to :${tlsPort}`,
            '  }',
            '  chain http {',
            '    type nat hook output priority -90; policy accept;',
            `    meta skuid ${http} return`,
            `    tcp dport { 80, 443 } counter redirect to :${httpPort}`,
            '  }',
            '}',
            '',
          ].join('\n'),
        );
      } catch (error) {
        await Promise.all(proxies.map((p) => p.stop()));
        throw error;
      }
      return { proxies, operatorTable: table, embedded: false, uidExclusions: 3 };
    },
  };
};

/** The port a vendor listens on, as its own nft table names it (`redirect to :PORT`). */
function listenerPort(ns: Namespace, id: string): number {
  const port = Number(/redirect to :(\d+)/.exec(ns.exec('nft', ['list', 'table', 'inet', `coproxy-${id}`]))?.[1]);
  if (!Number.isInteger(port) || port <= 0) throw new Error(`no listener port in coproxy-${id}'s table`);
  return port;
}

const chain = (backend: BackendName): VendorSpec[] => [
  // TLS first, as a TLS inspector usually sits closest to the app: it passes plain HTTP
  // on as opaque, and the HTTP vendor, reached through the records, inspects it.
  { kind: 'tls', id: 'compare-tls', priority: 10, ports: '80,443', backend },
  { kind: 'http', id: 'compare-http', priority: 20, ports: '80,443', backend },
];

/** coproxy-tls bumping the origin's h2 port, then (chain) coproxy-http on the same port, relaying the re-encrypted leg. */
const bumpChain = (withHttp: boolean): VendorSpec[] => [
  { kind: 'tls', id: 'compare-tls', priority: 10, ports: String(H2_PORT), backend: 'nftables', bump: true },
  ...(withHttp ? [{ kind: 'http', id: 'compare-http', priority: 20, ports: String(H2_PORT), backend: 'nftables' } as const] : []),
];

export function configurations(): Configuration[] {
  return [
    {
      key: 'direct',
      label: 'direct',
      rows: [
        { key: 'direct-http', label: 'direct', section: 'http' },
        { key: 'direct-https', label: 'direct', section: 'https' },
        { key: 'direct-node', label: 'direct', section: 'node' },
      ],
      setup: 'no proxy, no rule',
      start: () => Promise.resolve({ proxies: [], operatorTable: undefined, embedded: false, uidExclusions: 0 }),
    },
    peer('squid', 'Squid intercept', 'proxy', [80], PORTS.squid, startSquid, [{ key: 'squid', label: 'Squid intercept', section: 'http' }]),
    peer('mitmproxy', 'mitmproxy transparent', MITMPROXY_UID, [80], PORTS.mitmproxy, startMitmproxy, [
      { key: 'mitmproxy', label: 'mitmproxy transparent', section: 'http' },
    ]),
    peer('haproxy', 'HAProxy TCP relay', 'haproxy', [80, 443], PORTS.haproxy, startHaproxy, [
      { key: 'haproxy-http', label: 'HAProxy TCP relay', section: 'http' },
      { key: 'haproxy-https', label: 'HAProxy TCP relay', section: 'https' },
    ]),
    vendors('coproxy-http', 'coproxy-http', [{ kind: 'http', id: 'compare-http', priority: 20, ports: '80', backend: 'nftables' }], [
      { key: 'coproxy-http', label: 'coproxy-http', section: 'http' },
    ]),
    vendors('coproxy-tls', 'coproxy-tls splice', [{ kind: 'tls', id: 'compare-tls', priority: 10, ports: '443', backend: 'nftables' }], [
      { key: 'coproxy-tls', label: 'coproxy-tls splice', section: 'https' },
    ]),
    vendors('chain-nftables', 'coproxy-tls → coproxy-http (nftables)', chain('nftables'), [
      { key: 'chain-http', label: 'coproxy-tls → coproxy-http', section: 'http' },
      { key: 'chain-https', label: 'coproxy-tls → coproxy-http', section: 'https' },
      { key: 'chain-nftables-node', label: 'coproxy-tls → coproxy-http, nftables', section: 'node' },
    ]),
    vendors('chain-embedded', 'coproxy-tls → coproxy-http (embedded)', chain('embedded'), [
      { key: 'chain-embedded-node', label: 'coproxy-tls → coproxy-http, embedded', section: 'node' },
    ]),
    // Issue #17: the price of cooperation, the same two vendors chained as peers are.
    recordsOffChain(),
    // HTTP/2 (issue #16): the same origin's h2 port, straight, bumped, bumped in the chain, through mitmproxy.
    {
      key: 'h2-direct',
      label: 'direct (h2)',
      rows: [{ key: 'h2-direct', label: 'direct', section: 'h2' }],
      setup: 'no proxy, no rule',
      start: () => Promise.resolve({ proxies: [], operatorTable: undefined, embedded: false, uidExclusions: 0 }),
    },
    vendors('h2-bump', 'coproxy-tls bump (h2)', bumpChain(false), [{ key: 'h2-bump', label: 'coproxy-tls bump', section: 'h2' }]),
    vendors('h2-chain', 'coproxy-tls bump → coproxy-http (h2, nftables)', bumpChain(true), [{ key: 'h2-chain', label: 'coproxy-tls bump → coproxy-http', section: 'h2' }]),
    peer('h2-mitmproxy', 'mitmproxy transparent (h2)', MITMPROXY_UID, [H2_PORT], PORTS.mitmproxyH2, (ctx) => startMitmproxy(ctx, PORTS.mitmproxyH2, true), [
      { key: 'h2-mitmproxy', label: 'mitmproxy transparent', section: 'h2' },
    ]),
    // Issue #17: rounds of short flows through the nftables chain, each vendor's memory read after each.
    { ...vendors('soak', 'soak: coproxy-tls → coproxy-http (nftables)', chain('nftables'), [{ key: 'soak', label: 'coproxy-tls → coproxy-http', section: 'http' }]), soak: true },
  ];
}

/** The row's client-side target. */
export function rowTarget(row: RowSpec): { scheme: 'http' | 'https'; port: number } {
  switch (row.section) {
    case 'https':
      return { scheme: 'https', port: 443 };
    case 'h2':
      return { scheme: 'https', port: H2_PORT };
    case 'http':
    case 'node':
      return { scheme: 'http', port: 80 };
  }
}
