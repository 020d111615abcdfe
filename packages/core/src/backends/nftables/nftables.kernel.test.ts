import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256, until } from '../../testing/harness.js';
import { NETNS_V4, NETNS_V6, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '../../testing/netns.js';
import { type ListedTable, parseTable, parseTableNames } from './tables.js';

// Real kernel paths: every test makes its own network namespace (unique name) and removes
// it with `await using`, also when it fails. Vendors, origins and curl are separate
// processes inside it; vendors and the CLI run the built package (dist/).
const packageRoot = fileURLToPath(new URL('../../../', import.meta.url));
const fixtures = path.join(packageRoot, 'test-fixtures');
const cli = fileURLToPath(new URL('../../../dist/cli/coproxy.js', import.meta.url));
const ORIGIN_PORT = 8080;

interface Accepted {
  destination: { address: string; port: number; family: 4 | 6 };
  redirectedBy: string[];
  state: string;
  source: { address: string; port: number; pid?: number };
  context: string;
}

interface Vendor {
  readonly id: string;
  readonly child: ChildProcess;
  readonly accepted: Accepted[];
  readonly rejected: { code: string; message: string }[];
  /** Resolves with the listener, or rejects with the vendor's typed failure. */
  readonly ready: Promise<{ address: string; port: number }>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  send(message: 'close' | 'exit'): Promise<void>;
}

interface VendorOptions {
  readonly id: string;
  readonly priority: number;
  readonly ports?: number[];
  readonly failMode?: 'open' | 'closed';
  readonly propagate?: boolean;
  readonly maxAccepts?: number;
  readonly context?: string;
  readonly markMask?: number;
  /** Drop to this uid and gid before creating the redirector. */
  readonly dropTo?: number;
}

/**
 * A copy of the built package that any user can read, for vendors that drop to another
 * uid. The checkout may sit in a directory only root can traverse (a 0700 home): a vendor
 * running from there as uid 65534 could not load core's lazily required native addon
 * (koffi) and would fail with COPROXY_BACKEND_UNAVAILABLE, not with the missing privilege
 * the test is about. A real unprivileged vendor is installed where its user can read it;
 * this copy stands for that install. Made once per file, removed after it.
 */
let readableCopy: string | undefined;
function readablePackage(): string {
  if (readableCopy !== undefined) return readableCopy;
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-readable-'));
  fs.chmodSync(root, 0o755); // mkdtemp makes it 0700; the copy is root's, read-only to others
  readableCopy = root;
  fs.cpSync(path.join(packageRoot, 'package.json'), path.join(root, 'package.json'));
  fs.cpSync(path.join(packageRoot, 'dist'), path.join(root, 'dist'), { recursive: true });
  fs.cpSync(fixtures, path.join(root, 'test-fixtures'), { recursive: true });
  // pnpm keeps each package beside its own dependencies in one store directory
  // (`.pnpm/<name>@<version>/node_modules/`): copying those directories, links followed,
  // gives the runtime dependencies (rxjs with tslib, koffi with its platform binary).
  for (const dependency of ['rxjs', 'koffi']) {
    const store = path.dirname(fs.realpathSync(path.join(packageRoot, 'node_modules', dependency)));
    copyResolved(store, path.join(root, 'node_modules'));
  }
  return root;
}

/**
 * Copies a store directory with every link resolved. `cpSync`'s `dereference` is not
 * enough: on Node 22 it keeps the links inside the directory (e.g. `@koromix/koffi-linux-x64`),
 * which would point back into a checkout only root may traverse.
 */
function copyResolved(from: string, to: string): void {
  fs.mkdirSync(to, { recursive: true });
  for (const entry of fs.readdirSync(from)) {
    const real = fs.realpathSync(path.join(from, entry));
    if (entry.startsWith('@') && fs.statSync(real).isDirectory()) copyResolved(real, path.join(to, entry));
    else fs.cpSync(real, path.join(to, entry), { recursive: true, dereference: true });
  }
}

function startVendor(netns: Netns, options: VendorOptions): Vendor {
  const from = options.dropTo === undefined ? fixtures : path.join(readablePackage(), 'test-fixtures');
  const child = netns.spawn(process.execPath, [path.join(from, 'nft-vendor.mjs'), JSON.stringify({ ports: [ORIGIN_PORT], ...options })], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const accepted: Accepted[] = [];
  const rejected: { code: string; message: string }[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  let closed: (() => void) | undefined;
  const ready = new Promise<{ address: string; port: number }>((resolve, reject) => {
    type Message = { ready?: { address: string; port: number }; accepted?: Accepted; rejected?: { code: string; message: string } };
    child.on('message', (message: Message & { failed?: { code: string; message: string }; closed?: boolean }) => {
      if (message.ready !== undefined) resolve(message.ready);
      if (message.accepted !== undefined) accepted.push(message.accepted);
      if (message.rejected !== undefined) rejected.push(message.rejected);
      if (message.failed !== undefined) reject(Object.assign(new Error(message.failed.message), { code: message.failed.code }));
      if (message.closed === true) closed?.();
    });
    void exited.then(({ code, signal }) => reject(new Error(`vendor ${options.id} exited early (${code ?? signal})`)));
  });
  return {
    id: options.id,
    child,
    accepted,
    rejected,
    ready,
    exited,
    send(message) {
      const done = new Promise<void>((resolve) => (closed = resolve));
      child.send(message);
      return done;
    },
  };
}

async function startOrigin(netns: Netns, addresses: readonly string[] = ['127.0.0.1', '::1', NETNS_V4, NETNS_V6]): Promise<void> {
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'mark-origin.mjs'), ...addresses, String(ORIGIN_PORT)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('message', () => resolve());
    child.once('exit', (code) => reject(new Error(`origin exited early with ${code}`)));
  });
}

interface OriginReply {
  mark: number;
  bytes: number;
  sha256: string;
  local: string;
}

/** Unmodified curl, inside the namespace, POSTing `body`; resolves with the origin's reply and curl's pid. */
async function curl(netns: Netns, host: string, body: Buffer): Promise<{ reply: OriginReply; pid: number }> {
  const file = path.join(os.tmpdir(), `coproxy-body-${randomBytes(6).toString('hex')}`);
  fs.writeFileSync(file, body);
  try {
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${ORIGIN_PORT}/`;
    const child = netns.spawn('curl', ['-sS', '--max-time', '30', '-g', '--data-binary', `@${file}`, url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    // 'close', not 'exit': 'exit' may come before the last of curl's output has been read.
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    if (code !== 0) throw Object.assign(new Error(`curl ${url} exited with ${code}: ${stderr.trim()}`), { exitCode: code });
    return { reply: JSON.parse(stdout) as OriginReply, pid: child.pid ?? -1 };
  } finally {
    fs.rmSync(file, { force: true });
  }
}

/** The coproxy tables, read with the nft command an operator would use. */
async function tables(netns: Netns): Promise<ListedTable[]> {
  const { stdout } = await netns.run('nft', ['list', 'tables', 'inet']);
  const listed: ListedTable[] = [];
  for (const name of parseTableNames(stdout)) {
    const table = parseTable((await netns.run('nft', ['-a', 'list', 'table', 'inet', name])).stdout);
    if (table !== undefined) listed.push(table);
  }
  return listed;
}

async function bitOf(netns: Netns, id: string): Promise<number> {
  const table = (await tables(netns)).find((t) => t.id === id);
  if (table === undefined) throw new Error(`no table for ${id}`);
  return table.bit;
}

const coproxyCli = (netns: Netns, ...args: string[]) => netns.run(process.execPath, [cli, ...args]);

// Each test starts vendor and origin processes in a namespace: on a 2-core machine at load
// 18-22 a child took over 10 s to start, so the hang guard is wider than the package's 30 s.
describe.skipIf(skipKernelTests)('nftables backend, in network namespaces', { timeout: 120_000 }, () => {
  beforeAll(assertKernelTestsCanRun);
  afterAll(() => {
    if (readableCopy !== undefined) fs.rmSync(readableCopy, { recursive: true, force: true });
  });

  it('redirects unmodified curl through one vendor, IPv4 and IPv6, with the original destination', async () => {
    await using netns = await createNetns('one');
    await startOrigin(netns);
    const vendor = startVendor(netns, { id: 'solo', priority: 0, context: 'tag-7' });
    await vendor.ready;
    const bit = await bitOf(netns, 'solo');
    expect((await netns.run('cat', ['/proc/sys/net/ipv4/tcp_fwmark_accept'])).stdout.trim()).toBe('1');

    for (const [host, family] of [[NETNS_V4, 4], [NETNS_V6, 6], ['127.0.0.1', 4], ['::1', 6]] as const) {
      const body = randomBytes(256 * 1024);
      const { reply, pid } = await curl(netns, host, body);
      expect(reply).toEqual({ mark: bit, bytes: body.length, sha256: sha256(body), local: host });
      await until(() => vendor.accepted.some((a) => a.destination.address === host), 5000, `the vendor to report ${host}`);
      const seen = vendor.accepted.find((a) => a.destination.address === host);
      expect(seen).toMatchObject({
        destination: { address: host, port: ORIGIN_PORT, family },
        redirectedBy: ['solo'],
        state: 'NotRedirected',
        source: { pid },
        context: 'tag-7',
      });
    }
    expect(vendor.accepted).toHaveLength(4);

    // A client that dials the listener itself was not redirected: forwarding it would
    // loop into the listener, so it is rejected, and the vendor goes on serving.
    const { port } = await vendor.ready;
    const direct = await netns.run('curl', ['-s', '--max-time', '5', `http://127.0.0.1:${port}/`]).then(
      () => ({ code: 0 }),
      (error: { code: number }) => error,
    );
    expect([52, 56]).toContain(direct.code); // curl: closed (52) or reset (56) without a reply
    await until(() => vendor.rejected.length === 1, 5000, 'the direct connection to be rejected');
    expect(vendor.rejected[0]).toMatchObject({ code: 'COPROXY_RECORDS_MISMATCH' });
    expect((await curl(netns, NETNS_V4, Buffer.from('still serving'))).reply.mark).toBe(bit);
  });

  it.each([2, 3])('chains %i vendor processes at random priorities: each inspects each flow once', async (count) => {
    await using netns = await createNetns(`chain${count}`);
    await startOrigin(netns);
    // Distinct random priorities in the nat range, printed so a failure can be replayed.
    const priorities = new Set<number>();
    while (priorities.size < count) priorities.add(Math.floor(Math.random() * 2000) - 199);
    const specs = [...priorities].map((priority, i) => ({ id: `v${i}`, priority }));
    console.log(`vendors: ${JSON.stringify(specs)}`);
    // Started at the same moment: bit allocation must not hand one bit to two of them.
    const vendors = specs.map((spec) => startVendor(netns, spec));
    await Promise.all(vendors.map((v) => v.ready));
    const bits = await Promise.all(specs.map((spec) => bitOf(netns, spec.id)));
    expect(new Set(bits).size).toBe(count);
    const union = bits.reduce((a, b) => (a | b) >>> 0, 0);
    const order = [...specs].sort((a, b) => a.priority - b.priority).map((s) => s.id);

    const flows = 3;
    for (let i = 0; i < flows; i++) {
      const body = randomBytes(64 * 1024 + i);
      const { reply } = await curl(netns, i % 2 === 0 ? NETNS_V4 : NETNS_V6, body);
      expect(reply).toMatchObject({ mark: union, bytes: body.length, sha256: sha256(body) });
    }
    await until(() => vendors.every((v) => v.accepted.length >= flows), 5000, 'every vendor to report every flow');
    for (const vendor of vendors) {
      expect(vendor.accepted).toHaveLength(flows); // exactly once per flow
      const position = order.indexOf(vendor.id);
      for (const seen of vendor.accepted) {
        expect(seen.redirectedBy).toEqual(order.slice(0, position + 1));
        expect(seen.state).toBe(position === 0 ? 'NotRedirected' : 'RedirectedByOther');
      }
    }
  });

  it('shows the loop when vendors do not propagate records, and the bound stops it', async () => {
    await using netns = await createNetns('loop');
    await startOrigin(netns);
    const bound = 10;
    const vendors = [
      startVendor(netns, { id: 'naive-a', priority: 10, propagate: false, maxAccepts: bound }),
      startVendor(netns, { id: 'naive-b', priority: 20, propagate: false, maxAccepts: bound }),
    ];
    await Promise.all(vendors.map((v) => v.ready));
    // Each vendor sets only its own bit on the onward socket, so the other one catches
    // the flow again, and again: the same destination accepted over and over.
    await expect(curl(netns, NETNS_V4, Buffer.from('loop'))).rejects.toThrow(/curl/);
    for (const vendor of vendors) {
      expect(vendor.accepted.length).toBeGreaterThan(1);
      expect(vendor.accepted.length).toBeLessThanOrEqual(bound + 1);
      expect(new Set(vendor.accepted.map((a) => `${a.destination.address}:${a.destination.port}`))).toEqual(new Set([`${NETNS_V4}:${ORIGIN_PORT}`]));
    }
    // Each vendor saw only the other's bit: records cannot tell it already inspected the flow.
    expect(vendors[0]!.accepted.every((a) => !a.redirectedBy.slice(0, -1).includes('naive-a'))).toBe(true);

    // The same two vendors propagating records: one pass each, and the flow arrives.
    await Promise.all(vendors.map((v) => v.send('exit')));
    const fixed = [startVendor(netns, { id: 'naive-a', priority: 10 }), startVendor(netns, { id: 'naive-b', priority: 20 })];
    await Promise.all(fixed.map((v) => v.ready));
    const { reply } = await curl(netns, NETNS_V4, Buffer.from('once'));
    expect(reply.bytes).toBe(4);
    await until(() => fixed.every((v) => v.accepted.length === 1), 5000, 'one pass each');
  });

  it('leaves no table after close(), SIGTERM or SIGINT, and traffic then goes direct', async () => {
    await using netns = await createNetns('close');
    await startOrigin(netns);
    const closing = startVendor(netns, { id: 'closing', priority: 1 });
    const termed = startVendor(netns, { id: 'termed', priority: 2, failMode: 'closed' });
    const interrupted = startVendor(netns, { id: 'interrupted', priority: 3, failMode: 'closed' });
    await Promise.all([closing.ready, termed.ready, interrupted.ready]);
    expect((await tables(netns)).map((t) => t.id).sort()).toEqual(['closing', 'interrupted', 'termed']);

    await closing.send('close'); // the process stays up: close() alone removed the table
    expect((await tables(netns)).map((t) => t.id).sort()).toEqual(['interrupted', 'termed']);
    termed.child.kill('SIGTERM');
    interrupted.child.kill('SIGINT');
    // coproxy removed the tables, then let each signal take its default course.
    expect(await termed.exited).toEqual({ code: null, signal: 'SIGTERM' });
    expect(await interrupted.exited).toEqual({ code: null, signal: 'SIGINT' });
    expect(await tables(netns)).toEqual([]);
    const { reply } = await curl(netns, NETNS_V4, Buffer.from('direct'));
    expect(reply.mark).toBe(0);
    expect(closing.accepted).toEqual([]);
  });

  it('after SIGKILL: a fail-open table is gone at once, a fail-closed one blocks until restart or cleanup', async () => {
    await using netns = await createNetns('kill');
    await startOrigin(netns);
    const open = startVendor(netns, { id: 'killed-open', priority: 1 });
    const closed = startVendor(netns, { id: 'killed-closed', priority: 2, failMode: 'closed' });
    await Promise.all([open.ready, closed.ready]);
    const closedBit = await bitOf(netns, 'killed-closed');

    open.child.kill('SIGKILL');
    await open.exited;
    // The kernel removed the owner table with the process's netlink socket.
    expect((await tables(netns)).map((t) => t.id)).toEqual(['killed-closed']);

    closed.child.kill('SIGKILL');
    await closed.exited;
    expect((await tables(netns)).map((t) => t.id)).toEqual(['killed-closed']);
    // Fail-closed: the flow is refused rather than let through uninspected.
    await expect(curl(netns, NETNS_V4, Buffer.from('blocked'))).rejects.toMatchObject({ exitCode: 7 });
    const listing = (await coproxyCli(netns, 'nft', 'list')).stdout;
    expect(listing).toMatch(/coproxy-killed-closed\s+0x[0-9a-f]{8}\s+2\s+closed\s+\d+\s+stale/);
    expect(listing).toContain('blocks the traffic it matches');
    expect((await coproxyCli(netns, 'nft', 'cleanup')).stdout).toContain('kept coproxy-killed-closed');

    // The vendor restarts: it replaces its stale table and keeps its bit.
    const restarted = startVendor(netns, { id: 'killed-closed', priority: 2, failMode: 'closed' });
    await restarted.ready;
    expect(await bitOf(netns, 'killed-closed')).toBe(closedBit);
    expect((await curl(netns, NETNS_V4, Buffer.from('inspected'))).reply.mark).toBe(closedBit);
    restarted.child.kill('SIGKILL');
    await restarted.exited;

    // Or an operator decides to let the traffic through.
    expect((await coproxyCli(netns, 'nft', 'cleanup', '--fail-closed')).stdout).toContain('removed coproxy-killed-closed');
    expect(await tables(netns)).toEqual([]);
    expect((await curl(netns, NETNS_V4, Buffer.from('direct'))).reply.mark).toBe(0);
  });

  it('removes a stale fail-open table at the next start, when the kernel could not', async () => {
    await using netns = await createNetns('stale');
    await startOrigin(netns);
    // What an older kernel without owner tables would leave behind: a redirect to a dead port.
    const ghost = 'table inet coproxy-ghost {\n comment "coproxy v1 id=ghost bit=0x01000000 prio=0 fail=open pid=4194303 start=1"\n' +
      ` chain output { type nat hook output priority 0; policy accept; tcp dport ${ORIGIN_PORT} redirect to :9; }\n}\n`;
    const file = path.join(os.tmpdir(), `coproxy-ghost-${randomBytes(4).toString('hex')}.nft`);
    fs.writeFileSync(file, ghost);
    try {
      await netns.run('nft', ['-f', file]);
    } finally {
      fs.rmSync(file, { force: true });
    }
    await expect(curl(netns, NETNS_V4, Buffer.from('x'))).rejects.toMatchObject({ exitCode: 7 });
    expect((await coproxyCli(netns, 'nft', 'cleanup', '--dry-run')).stdout).toContain('would remove coproxy-ghost');
    expect((await tables(netns)).map((t) => t.id)).toEqual(['ghost']);

    const vendor = startVendor(netns, { id: 'next', priority: 5 });
    await vendor.ready;
    expect((await tables(netns)).map((t) => t.id)).toEqual(['next']);
    expect((await curl(netns, NETNS_V4, Buffer.from('x'))).reply.mark).toBe(await bitOf(netns, 'next'));
  });

  it('gives concurrent vendors distinct bits and says when the mask is exhausted', async () => {
    await using netns = await createNetns('mask');
    const mask = 0x00f00000;
    const vendors = ['m0', 'm1', 'm2', 'm3'].map((id, i) => startVendor(netns, { id, priority: i, markMask: mask }));
    await Promise.all(vendors.map((v) => v.ready));
    const bits = await Promise.all(vendors.map((v) => bitOf(netns, v.id)));
    expect(bits.every((bit) => (bit & mask) === bit)).toBe(true);
    expect(bits.reduce((a, b) => (a | b) >>> 0, 0)).toBe(mask);

    const fifth = startVendor(netns, { id: 'm4', priority: 9, markMask: mask });
    await expect(fifth.ready).rejects.toMatchObject({ code: 'COPROXY_MARK_MASK_EXHAUSTED' });
    expect((await tables(netns)).map((t) => t.id).sort()).toEqual(['m0', 'm1', 'm2', 'm3']);
  });

  it('refuses an unprivileged vendor with typed errors naming what is missing', async () => {
    await using netns = await createNetns('unpriv');
    // Fresh namespace: tcp_fwmark_accept is 0 and only root may turn it on.
    const early = startVendor(netns, { id: 'nobody', priority: 0, dropTo: 65534 });
    await expect(early.ready).rejects.toMatchObject({ code: 'COPROXY_SYSCTL_REQUIRED' });
    await expect(early.ready).rejects.toThrow(/net\.ipv4\.tcp_fwmark_accept is 0 and must be 1/);
    await netns.run('sysctl', ['-qw', 'net.ipv4.tcp_fwmark_accept=1']);
    const late = startVendor(netns, { id: 'nobody', priority: 0, dropTo: 65534 });
    await expect(late.ready).rejects.toMatchObject({ code: 'COPROXY_PERMISSION_DENIED' });
    await expect(late.ready).rejects.toThrow(/CAP_NET_ADMIN/);
    expect(await tables(netns)).toEqual([]);
  });

  it('keeps an unprivileged process from forging a record to skip inspection', async () => {
    await using netns = await createNetns('forge');
    await startOrigin(netns);
    const vendor = startVendor(netns, { id: 'guard', priority: 0 });
    await vendor.ready;
    const bit = await bitOf(netns, 'guard');
    const forge = (uid: number) =>
      netns.run(process.execPath, [path.join(fixtures, 'forge-mark.mjs'), String(uid), String(bit), NETNS_V4, String(ORIGIN_PORT)]);

    // As uid 65534 the mark cannot be set (EPERM), and the plain connection is inspected.
    const denied = JSON.parse((await forge(65534)).stdout) as { setsockopt: string; uid: number; reply: OriginReply };
    expect(denied).toMatchObject({ uid: 65534, setsockopt: 'EPERM', reply: { mark: bit } });
    await until(() => vendor.accepted.length === 1, 5000, 'the guard to inspect the flow');
    // The control: root can set it, and then the flow does skip the guard.
    const root = JSON.parse((await forge(0)).stdout) as { setsockopt: string; reply: OriginReply };
    expect(root).toMatchObject({ setsockopt: 'ok', reply: { mark: bit } });
    expect(vendor.accepted).toHaveLength(1);
  });
});
