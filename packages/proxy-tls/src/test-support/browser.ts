// Headless Chromium and its test-support servers in a kernel test's network namespace, for
// the Chromium and QUIC fallback tests. Not part of the build.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { Netns } from '@coproxy/core/testing';
import { within } from './cli-process.js';

const run = promisify(execFile);
const testSupport = fileURLToPath(new URL('./', import.meta.url));

/**
 * Starts a test-support script in the namespace; returns what `pick` takes from each IPC
 * message, as they arrive, once a message has `readyKey: true`.
 */
export async function startReporter<TReport>(
  netns: Netns,
  script: string,
  args: readonly string[],
  pick: (message: Record<string, unknown>) => TReport | undefined,
  readyKey = 'ready',
): Promise<TReport[]> {
  const received: TReport[] = [];
  const child = netns.spawn(process.execPath, [path.join(testSupport, script), ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: Record<string, unknown>) => {
      const report = pick(message);
      if (report !== undefined) received.push(report);
      if (message[readyKey] === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`${script} exited early with ${String(code)}`)));
  });
  // A hang guard: on a loaded 2-core machine (load 18-22) an origin took over 10 s to listen.
  await within(ready, 30_000, `${script} to listen`);
  return received;
}

/** A HOME whose NSS database (where Chromium on Linux reads user-trusted roots) trusts `caPem` for TLS servers, or nothing. */
export async function browserHome(dir: string, caPem: string | undefined): Promise<string> {
  const nssdb = path.join(dir, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  await run('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
  if (caPem !== undefined) await run('certutil', ['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', 'coproxy-test', '-i', caPem]);
  return dir;
}

export interface ChromiumRun {
  readonly dom: string;
  readonly stderr: string;
}

/**
 * Headless Chromium loads `url` in the namespace and prints the DOM once the page is
 * settled (--virtual-time-budget lets the page's script finish), or until `stopWhen`. `extra`
 * goes before the URL. --no-sandbox because the test runs as root.
 */
export async function runChromium(
  netns: Netns,
  home: string,
  userDataDir: string,
  url: string,
  extra: readonly string[],
  /** Polled: once true, Chromium is stopped (a test that needs only what it sent first). */
  stopWhen?: () => boolean,
): Promise<ChromiumRun> {
  const child = netns.spawn(
    'chromium',
    [
      ...['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      `--user-data-dir=${userDataDir}`,
      ...extra,
      '--virtual-time-budget=10000',
      '--dump-dom',
      url,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: home } },
  );
  let dom = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (dom += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const poll = stopWhen === undefined ? undefined : setInterval(() => stopWhen() && child.kill('SIGKILL'), 50);
  try {
    // A hang guard: ~8 s a run here at load 5; CI runs every package's tests at once on 2 cores.
    await within(new Promise((resolve) => child.once('close', resolve)), 120_000, `chromium ${url}`);
  } finally {
    clearInterval(poll);
    child.kill('SIGKILL'); // a no-op once it has exited
    // Its zygotes and crashpad handlers (daemonised: init's children, a group of their own)
    // outlive the browser and write to the profile and HOME, which the test removes next.
    await killChromiumIn(netns);
  }
  return { dom, stderr };
}

/**
 * SIGKILLs every Chromium process (the browser's binaries: chromium, chrome_crashpad_handler)
 * left in the namespace, until none is left; other processes of the test there are spared.
 * Bounded: throws after 10 s.
 */
async function killChromiumIn(netns: Netns): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const pids = (await run('ip', ['netns', 'pids', netns.name])).stdout.split('\n').filter(Boolean).filter(isChromium);
    if (pids.length === 0) return;
    if (Date.now() > deadline) throw new Error(`Chromium processes ${pids.join(', ')} in ${netns.name} survive SIGKILL`);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // gone meanwhile is fine
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Whether `pid` runs one of Chromium's binaries (a zombie has no exe link: it writes nothing more). */
function isChromium(pid: string): boolean {
  try {
    return /^(chromium|chrome)(_crashpad_handler)?$/.test(path.basename(fs.readlinkSync(`/proc/${pid}/exe`)));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false; // exited, or a zombie
    throw error;
  }
}

/** One UDP datagram seen on the namespace's loopback. */
export interface CapturedDatagram {
  readonly src: string;
  readonly dst: string;
  readonly payload: Buffer;
}

const MARKER = 'coproxy-capture-end';

/** tshark's fields of the packets `filter` selects, one array per packet. */
async function readFields(file: string, filter: string, fields: readonly string[]): Promise<string[][]> {
  const args = ['-r', file, '-Y', filter, '-T', 'fields', ...fields.flatMap((field) => ['-e', field]), '-E', 'separator=/t', '-E', 'occurrence=f'];
  const { stdout } = await run('tshark', args, { timeout: 30_000, maxBuffer: 64 * 1024 * 1024 });
  return stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => line.split('\t'));
}

async function readDatagrams(file: string): Promise<CapturedDatagram[]> {
  const rows = await readFields(file, 'udp && !icmp', ['ip.src', 'udp.srcport', 'ip.dst', 'udp.dstport', 'udp.payload']);
  return rows.map(([srcAddress, srcPort, dstAddress, dstPort, payload]) => ({ src: `${srcAddress}:${srcPort}`, dst: `${dstAddress}:${dstPort}`, payload: Buffer.from(payload ?? '', 'hex') }));
}

/** Who got an ICMP port unreachable: the outer destination's address with the quoted datagram's source port (the socket that sent it). */
async function readPortUnreachable(file: string): Promise<string[]> {
  const rows = await readFields(file, 'icmp.type == 3 && icmp.code == 3', ['ip.dst', 'udp.srcport']);
  return rows.map(([address, port]) => `${address}:${port}`);
}

export interface Capture {
  /** UDP datagrams in capture order, up to the end marker. */
  readonly datagrams: CapturedDatagram[];
  /** The sockets (`address:port`) that were sent ICMP port unreachable, in order. */
  readonly portUnreachable: string[];
}

/**
 * dumpcap on the namespace's loopback (where all its traffic goes: its addresses are on
 * `lo`), UDP and ICMP; `stop()` gives every datagram as tshark reads the file, in capture
 * order, and who was sent ICMP port unreachable, then ends it. Each datagram crosses `lo` once, after the OUTPUT chain's NAT.
 * libpcap hands packets over in blocks, and those of a block not yet handed over when
 * dumpcap stops are lost: `stop()` first sends a marker datagram and waits until the file
 * has it, so everything before it is in the file.
 */
export async function captureUdp(netns: Netns, file: string): Promise<{ stop(): Promise<Capture> }> {
  const dumpcap = netns.spawn('dumpcap', ['-i', 'lo', '-f', 'udp or icmp', '-w', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const exited = new Promise<void>((resolve) => dumpcap.once('close', () => resolve()));
  await within(
    new Promise<void>((resolve, reject) => {
      dumpcap.stderr?.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('Capturing on')) resolve();
      });
      void exited.then(() => reject(new Error(`dumpcap exited: ${stderr.trim()}`)));
    }),
    10_000,
    'dumpcap to capture',
  );
  const marker = Buffer.from(MARKER).toString('hex');
  const send = `const s = require('node:dgram').createSocket('udp4'); s.send(Buffer.from('${MARKER}'), 9, '127.0.0.1', () => s.close());`;
  return {
    async stop() {
      const deadline = Date.now() + 10_000;
      try {
        for (;;) {
          await new Promise<void>((resolve) => netns.spawn(process.execPath, ['-e', send], { stdio: 'ignore' }).once('close', () => resolve()));
          const datagrams = await readDatagrams(file);
          const end = datagrams.findIndex((d) => d.payload.toString('hex') === marker);
          // The marker's own port unreachable (nothing listens on port 9) may come after: it is no socket of the test's.
          if (end !== -1) return { datagrams: datagrams.slice(0, end), portUnreachable: await readPortUnreachable(file) };
          if (Date.now() > deadline) throw new Error(`the capture's end marker did not reach ${file} within 10 s`);
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      } finally {
        dumpcap.kill('SIGINT');
        await within(exited, 10_000, 'dumpcap to stop');
      }
    },
  };
}
