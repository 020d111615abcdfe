import type { ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { until } from '../../testing/harness.js';
import { NETNS_V4, NETNS_V6, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '../../testing/netns.js';
import { parseTableNames } from './tables.js';

// UDP through the nftables backend on real kernel paths: every test makes its own network
// namespace and removes it. Vendors, the echo origin and the client are separate processes
// inside it; vendors run the built package (dist/). The client is plain node:dgram.
const fixtures = fileURLToPath(new URL('../../../test-fixtures/', import.meta.url));
const ORIGIN_PORT = 5353;

interface FlowAccepted {
  id: string;
  transport: string;
  destination: { address: string; port: number; family: 4 | 6 };
  redirectedBy: string[];
  state: string;
  source: { address: string; port: number };
}

interface FlowClosed {
  id: string;
  transport: string;
  endedBy: string;
  datagramsFromClient: number;
  datagramsToClient: number;
  bytesFromClient: number;
  bytesToClient: number;
}

interface UdpVendor {
  readonly accepted: FlowAccepted[];
  readonly closed: FlowClosed[];
  readonly rejected: { code: string; message: string }[];
  readonly ready: Promise<unknown>;
  close(): Promise<void>;
}

interface UdpVendorOptions {
  readonly id: string;
  readonly priority: number;
  readonly reject?: boolean;
  readonly maxUdpFlows?: number;
  readonly udpIdleTimeoutMs?: number;
}

function startVendor(netns: Netns, options: UdpVendorOptions): UdpVendor {
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'udp-vendor.mjs'), JSON.stringify({ udpPorts: [ORIGIN_PORT], ...options })], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const accepted: FlowAccepted[] = [];
  const closed: FlowClosed[] = [];
  const rejected: { code: string; message: string }[] = [];
  let onClosed: (() => void) | undefined;
  const ready = new Promise((resolve, reject) => {
    type Message = {
      ready?: unknown;
      accepted?: FlowAccepted;
      closed?: FlowClosed;
      rejected?: { code: string; message: string };
      failed?: { code: string; message: string };
      closedRedirector?: boolean;
    };
    child.on('message', (message: Message) => {
      if (message.ready !== undefined) resolve(message.ready);
      if (message.accepted !== undefined) accepted.push(message.accepted);
      if (message.closed !== undefined) closed.push(message.closed);
      if (message.rejected !== undefined) rejected.push(message.rejected);
      if (message.failed !== undefined) reject(Object.assign(new Error(message.failed.message), { code: message.failed.code }));
      if (message.closedRedirector === true) onClosed?.();
    });
    child.once('exit', (code) => reject(new Error(`vendor ${options.id} exited early (${code})`)));
  });
  return {
    accepted,
    closed,
    rejected,
    ready,
    close() {
      const done = new Promise<void>((resolve) => (onClosed = resolve));
      child.send('close');
      return done;
    },
  };
}

interface Received {
  from: string;
  local: string;
  bytes: number;
}

async function startEcho(netns: Netns, addresses: readonly string[] = [NETNS_V4, NETNS_V6]): Promise<Received[]> {
  const child: ChildProcess = netns.spawn(process.execPath, [path.join(fixtures, 'udp-echo.mjs'), String(ORIGIN_PORT), ...addresses], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const received: Received[] = [];
  await new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; received?: Received }) => {
      if (message.ready === true) resolve();
      if (message.received !== undefined) received.push(message.received);
    });
    child.once('exit', (code) => reject(new Error(`echo origin exited early with ${code}`)));
  });
  return received;
}

interface EchoResult {
  local: string;
  replies: { intact: boolean; bytes: number; from: string }[];
  error?: string;
}

async function client<TResult>(netns: Netns, host: string, mode: 'echo' | 'refused', sizes: readonly number[] = []): Promise<TResult> {
  const { stdout } = await netns.run(process.execPath, [path.join(fixtures, 'udp-client.mjs'), host, String(ORIGIN_PORT), mode, ...sizes.map(String)]);
  return JSON.parse(stdout) as TResult;
}

const endpoint = (host: string, port: number): string => `${host}:${port}`;

async function coproxyTables(netns: Netns): Promise<string[]> {
  return parseTableNames((await netns.run('nft', ['list', 'tables', 'inet'])).stdout);
}

const SIZES = [1, 512, 1200, 1472, 37];

describe.skipIf(skipKernelTests)('nftables backend, UDP flows, in network namespaces', () => {
  beforeAll(assertKernelTestsCanRun);

  it('redirects an unmodified UDP client through one vendor, IPv4 and IPv6: one flow, bytes intact, replies from the original address', async () => {
    await using netns = await createNetns('udp-one');
    const received = await startEcho(netns);
    const vendor = startVendor(netns, { id: 'solo', priority: 0, udpIdleTimeoutMs: 500 });
    await vendor.ready;

    for (const host of [NETNS_V4, NETNS_V6]) {
      const result = await client<EchoResult>(netns, host, 'echo', SIZES);
      expect(result.error).toBeUndefined();
      expect(result.replies.map((r) => r.intact)).toEqual(SIZES.map(() => true));
      expect(result.replies.map((r) => r.bytes)).toEqual(SIZES);
      // Conntrack turns the vendor's replies back into the origin's address and port.
      expect(new Set(result.replies.map((r) => r.from))).toEqual(new Set([endpoint(host, ORIGIN_PORT)]));
    }
    await until(() => vendor.closed.length === 2, 5000, 'both flows to end by idle timeout');
    // One flow per client 5-tuple, each accepted once, with the original destination.
    expect(vendor.accepted).toHaveLength(2);
    expect(vendor.accepted.map((a) => a.transport)).toEqual(['udp', 'udp']);
    expect(vendor.accepted.map((a) => a.destination)).toEqual([
      { address: NETNS_V4, port: ORIGIN_PORT, family: 4 },
      { address: NETNS_V6, port: ORIGIN_PORT, family: 6 },
    ]);
    expect(vendor.accepted.map((a) => [a.state, a.redirectedBy])).toEqual([
      ['NotRedirected', ['solo']],
      ['NotRedirected', ['solo']],
    ]);
    const total = SIZES.reduce((sum, size) => sum + size, 0);
    for (const closed of vendor.closed) {
      expect(closed).toMatchObject({ transport: 'udp', endedBy: 'idle', datagramsFromClient: SIZES.length, datagramsToClient: SIZES.length, bytesFromClient: total, bytesToClient: total });
    }
    // The origin got each datagram once, from the vendor's onward socket (not from the client).
    expect(received).toHaveLength(2 * SIZES.length);
  });

  it('chains a UDP flow through two vendors, each accepting it once, and removes every rule on close', async () => {
    await using netns = await createNetns('udp-two');
    const received = await startEcho(netns, [NETNS_V4]);
    const first = startVendor(netns, { id: 'first', priority: 0 });
    await first.ready;
    const second = startVendor(netns, { id: 'second', priority: 10 });
    await second.ready;

    const result = await client<EchoResult>(netns, NETNS_V4, 'echo', SIZES);
    expect(result.replies.every((r) => r.intact && r.from === endpoint(NETNS_V4, ORIGIN_PORT))).toBe(true);
    expect(first.accepted.map((a) => [a.state, a.redirectedBy])).toEqual([['NotRedirected', ['first']]]);
    expect(second.accepted.map((a) => [a.state, a.redirectedBy])).toEqual([['RedirectedByOther', ['first', 'second']]]);
    // The second vendor's flow comes from the first vendor's onward socket, not the client.
    expect(second.accepted[0]!.source).not.toEqual(first.accepted[0]!.source);
    expect(second.accepted[0]!.destination).toEqual({ address: NETNS_V4, port: ORIGIN_PORT, family: 4 });
    expect(received).toHaveLength(SIZES.length);
    expect(new Set(received.map((r) => r.from)).size).toBe(1);

    expect(await coproxyTables(netns)).toEqual(expect.arrayContaining(['coproxy-first', 'coproxy-second']));
    await first.close();
    await second.close();
    expect(await coproxyTables(netns)).toEqual([]);
    // With the rules gone, a new flow reaches the origin directly.
    const direct = await client<EchoResult>(netns, NETNS_V4, 'echo', [64]);
    expect(direct.replies).toEqual([{ intact: true, bytes: 64, from: endpoint(NETNS_V4, ORIGIN_PORT) }]);
    expect(received.at(-1)!.from).toBe(direct.local);
    expect(first.accepted).toHaveLength(1);
    expect(second.accepted).toHaveLength(1);
  });

  it('rejects a flow so that the client sees the port refused (ICMP port unreachable), dialling nothing', async () => {
    await using netns = await createNetns('udp-reject');
    const received = await startEcho(netns, [NETNS_V4, NETNS_V6]);
    const vendor = startVendor(netns, { id: 'blocker', priority: 0, reject: true });
    await vendor.ready;
    for (const host of [NETNS_V4, NETNS_V6]) {
      const result = await client<{ refused: boolean; code?: string }>(netns, host, 'refused');
      expect(result).toMatchObject({ refused: true, code: 'ECONNREFUSED' });
    }
    // One flow per client at least: the client sends again every 100 ms until refused, and
    // on a loaded machine a datagram may come before the rejection is in the kernel; it is
    // then a new flow of the same client, rejected in turn. None is ever dialled.
    expect(new Set(vendor.accepted.map((a) => a.destination.address))).toEqual(new Set([NETNS_V4, NETNS_V6]));
    await until(() => vendor.closed.length === vendor.accepted.length, 5000, 'the rejected flows to be reported closed');
    expect(new Set(vendor.closed.map((c) => c.endedBy))).toEqual(new Set(['rejected']));
    expect(received).toEqual([]);
  });

  it('refuses a datagram sent to the listener itself (not redirected) with COPROXY_RECORDS_MISMATCH, forwarding nothing', async () => {
    await using netns = await createNetns('udp-direct');
    const received = await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { id: 'direct', priority: 0 });
    await vendor.ready;
    const listing = (await netns.run('nft', ['list', 'table', 'inet', 'coproxy-direct'])).stdout;
    const port = Number(/udp dport 5353 ct mark set meta mark redirect to :(\d+)/.exec(listing)?.[1]);
    expect(port).toBeGreaterThan(0);
    const script = `const s=require('dgram').createSocket('udp4');s.send(Buffer.from('hi'),${port},'127.0.0.1',()=>setTimeout(()=>s.close(),300))`;
    await netns.run(process.execPath, ['-e', script]);
    await until(() => vendor.rejected.length === 1, 5000, 'the refusal');
    expect(vendor.rejected.map((r) => r.code)).toEqual(['COPROXY_RECORDS_MISMATCH']);
    expect(vendor.accepted).toEqual([]);
    expect(received).toEqual([]);
  });

  it('refuses a new client beyond maxUdpFlows with COPROXY_UDP_FLOW_LIMIT while the open flow is served', async () => {
    await using netns = await createNetns('udp-limit');
    await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { id: 'small', priority: 0, maxUdpFlows: 1, udpIdleTimeoutMs: 60_000 });
    await vendor.ready;
    const served = await client<EchoResult>(netns, NETNS_V4, 'echo', [100]);
    expect(served.replies).toEqual([{ intact: true, bytes: 100, from: endpoint(NETNS_V4, ORIGIN_PORT) }]);
    // A second client (another source port): its datagram is dropped, no flow is opened.
    const refused = await client<EchoResult>(netns, NETNS_V4, 'echo', [100]);
    expect(refused.error).toBe('timed out');
    expect(vendor.accepted).toHaveLength(1);
    expect(vendor.rejected.map((r) => r.code)).toContain('COPROXY_UDP_FLOW_LIMIT');
  });
});
