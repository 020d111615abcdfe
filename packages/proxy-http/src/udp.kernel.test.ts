import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NETNS_V4, NETNS_V6, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '@coproxy/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import type { HttpExchange } from './events.js';
import { until, within } from './test-support/harness.js';

// coproxy-http's CLI with --udp-ports on the nftables backend, as an operator runs it: in a
// network namespace of the test's own, a UDP echo origin and an unmodified node:dgram
// client there too, redirected by the kernel. proxy-http reads no datagram protocol, so
// --unrecognised decides: relay (bytes intact both ways) or block (ICMP port unreachable).
const fixtures = fileURLToPath(new URL('./test-support/', import.meta.url));
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
const ID = 'acme-udp';
const UDP_PORT = 4433;
const SIZES = [1, 512, 1200, 1472];

interface Received {
  readonly from: string;
  readonly to: string;
  readonly bytes: number;
}

async function startEcho(netns: Netns): Promise<Received[]> {
  const child: ChildProcess = netns.spawn(process.execPath, [path.join(fixtures, 'udp-echo-origin.mjs'), String(UDP_PORT), NETNS_V4, NETNS_V6], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const received: Received[] = [];
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; received?: Received }) => {
      if (message.received !== undefined) received.push(message.received);
      if (message.ready === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the UDP origin exited early with ${String(code)}`)));
  });
  await within(ready, 20_000, 'the UDP origin to listen');
  return received;
}

interface EchoResult {
  readonly local?: string;
  readonly replies?: { intact: boolean; bytes: number; from: string }[];
  readonly refused?: boolean;
  readonly answered?: boolean;
  readonly error?: string;
}

async function client(netns: Netns, host: string, mode: 'echo' | 'refused', sizes: readonly number[] = []): Promise<EchoResult> {
  const { stdout } = await netns.run(process.execPath, [path.join(fixtures, 'udp-client.mjs'), host, String(UDP_PORT), mode, ...sizes.map(String)], { timeoutMs: 15_000 });
  return JSON.parse(stdout) as EchoResult;
}

interface LogLine {
  readonly msg: string;
  readonly connectionId?: string;
  readonly transport?: string;
  readonly action?: string;
  readonly reason?: string;
  readonly state?: string;
  readonly destination?: { readonly address: string; readonly port: number };
  readonly udpPorts?: unknown;
  readonly exchange?: HttpExchange;
}

function startCli(netns: Netns, args: readonly string[]): { lines: LogLine[]; ready: Promise<void>; exited: Promise<number | null>; child: ChildProcess } {
  const child = netns.spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  let partial = '';
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop() ?? '';
    for (const raw of parts) lines.push(JSON.parse(raw) as LogLine);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = until(() => lines.some((line) => line.msg === 'ready'), 15_000, 'the CLI to be ready').catch((error: unknown) => {
    throw new Error(`${(error as Error).message}: ${stderr.trim()}`);
  });
  return { lines, ready, exited, child };
}

async function tables(netns: Netns): Promise<string> {
  return (await netns.run('nft', ['list', 'tables'])).stdout;
}

describe.skipIf(skipKernelTests)('coproxy-http with --udp-ports on the nftables backend, in a network namespace', () => {
  beforeAll(assertKernelTestsCanRun);

  it('relays an unmodified UDP client under --unrecognised relay, IPv4 and IPv6: bytes intact, replies from the original address, logged as unrecognised', async () => {
    await using netns = await createNetns('http-udp');
    const received = await startEcho(netns);
    const proxy = startCli(netns, ['--id', ID, '--priority', '0', '--ports', '8080', '--udp-ports', String(UDP_PORT), '--backend', 'nftables', '--unrecognised', 'relay', '--log-level', 'info']);
    await proxy.ready;
    expect(proxy.lines.find((line) => line.msg === 'ready')).toMatchObject({ udpPorts: [UDP_PORT] });

    const clients: string[] = [];
    for (const host of [NETNS_V4, NETNS_V6]) {
      const result = await client(netns, host, 'echo', SIZES);
      expect(result.error).toBeUndefined();
      expect(result.replies?.map((r) => [r.intact, r.bytes, r.from])).toEqual(SIZES.map((size) => [true, size, `${host}:${UDP_PORT}`]));
      clients.push(result.local!);
    }
    // The origin heard every datagram, from the vendor's onward socket, not the client's.
    expect(received.map((r) => r.bytes)).toEqual([...SIZES, ...SIZES]);
    for (const r of received) expect(clients).not.toContain(r.from);

    await until(() => proxy.lines.filter((line) => line.msg === 'unrecognised protocol').length === 2, 5000, 'two unrecognised lines');
    const accepted = proxy.lines.filter((line) => line.msg === 'accepted');
    expect(accepted.map((line) => [line.state, line.destination?.port])).toEqual([
      ['NotRedirected', UDP_PORT],
      ['NotRedirected', UDP_PORT],
    ]);
    expect(proxy.lines.filter((line) => line.msg === 'unrecognised protocol').map((line) => [line.transport, line.action, line.reason])).toEqual([
      ['udp', 'relay', 'datagram'],
      ['udp', 'relay', 'datagram'],
    ]);

    // SIGTERM ends the open flows with the listener: each is logged with its counts, and the table goes.
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 10_000, 'the CLI to exit')).toBe(0);
    const exchanges = proxy.lines.flatMap((line) => (line.exchange?.transport === 'udp' ? [line.exchange] : []));
    const bytes = SIZES.reduce((sum, size) => sum + size, 0);
    expect(exchanges.map((e) => [e.kind, e.tunnel, e.datagrams])).toEqual([
      ['opaque', { bytesFromClient: bytes, bytesToClient: bytes }, { fromClient: SIZES.length, toClient: SIZES.length }],
      ['opaque', { bytesFromClient: bytes, bytesToClient: bytes }, { fromClient: SIZES.length, toClient: SIZES.length }],
    ]);
    expect(await tables(netns)).not.toContain(`coproxy-${ID}`);
  });

  it('blocks a UDP flow by default: the client gets ECONNREFUSED, the origin nothing', async () => {
    await using netns = await createNetns('http-udp-block');
    const received = await startEcho(netns);
    const proxy = startCli(netns, ['--id', ID, '--priority', '0', '--ports', '8080', '--udp-ports', String(UDP_PORT), '--backend', 'nftables', '--log-level', 'info']);
    await proxy.ready;

    for (const host of [NETNS_V4, NETNS_V6]) expect(await client(netns, host, 'refused')).toMatchObject({ refused: true });
    expect(received).toEqual([]);
    expect(proxy.lines.filter((line) => line.msg === 'unrecognised protocol').map((line) => [line.transport, line.action])).toEqual([
      ['udp', 'block'],
      ['udp', 'block'],
    ]);
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 10_000, 'the CLI to exit')).toBe(0);
  });
});
