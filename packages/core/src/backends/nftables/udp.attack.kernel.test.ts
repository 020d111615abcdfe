import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { until } from '../../testing/harness.js';
import { NETNS_V4, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '../../testing/netns.js';

// An attacker's pass over UDP on the nftables backend (issue #18): what conntrack and the
// vendor's flow table may disagree about. Each test makes its own network namespace; the
// vendor and the echo origins are separate processes in it, the client plain node:dgram.
const fixtures = fileURLToPath(new URL('../../../test-fixtures/', import.meta.url));
const ORIGIN_PORT = 5353;
/** A second origin address in the namespace (added by the test, on lo like NETNS_V4). */
const OTHER_V4 = '10.200.0.2';

interface Vendor {
  readonly accepted: { destination: { address: string; port: number }; source: { address: string; port: number } }[];
  readonly closed: { endedBy: string }[];
  readonly rejected: { code: string }[];
  readonly ready: Promise<unknown>;
  /** Closes the redirector (the process stays), as a vendor being stopped or upgraded does. */
  close(): Promise<void>;
}

function startVendor(netns: Netns, options: { readonly udpIdleTimeoutMs: number; readonly maxUdpFlows?: number }): Vendor {
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'udp-vendor.mjs'), JSON.stringify({ id: 'attacked', priority: 0, udpPorts: [ORIGIN_PORT], ...options })], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let onClosed: (() => void) | undefined;
  const vendor: Vendor = {
    accepted: [],
    closed: [],
    rejected: [],
    ready: undefined as unknown as Promise<unknown>,
    close() {
      const done = new Promise<void>((resolve) => (onClosed = resolve));
      child.send('close');
      return done;
    },
  };
  const ready = new Promise((resolve, reject) => {
    type Message = { ready?: unknown; accepted?: Vendor['accepted'][number]; closed?: Vendor['closed'][number]; rejected?: { code: string }; failed?: { message: string }; closedRedirector?: boolean };
    child.on('message', (message: Message) => {
      if (message.closedRedirector === true) onClosed?.();
      if (message.ready !== undefined) resolve(message.ready);
      if (message.rejected !== undefined) vendor.rejected.push(message.rejected);
      if (message.accepted !== undefined) vendor.accepted.push(message.accepted);
      if (message.closed !== undefined) vendor.closed.push(message.closed);
      if (message.failed !== undefined) reject(new Error(message.failed.message));
    });
    child.once('exit', (code) => reject(new Error(`vendor exited early (${code})`)));
  });
  return Object.assign(vendor, { ready });
}

/** Echo origins on each address; returns what each received, by its own address. */
async function startEcho(netns: Netns, addresses: readonly string[]): Promise<{ local: string; from: string; bytes: number }[]> {
  const child = netns.spawn(process.execPath, [path.join(fixtures, 'udp-echo.mjs'), String(ORIGIN_PORT), ...addresses], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const received: { local: string; from: string; bytes: number }[] = [];
  await new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; received?: (typeof received)[number] }) => {
      if (message.ready === true) resolve();
      if (message.received !== undefined) received.push(message.received);
    });
    child.once('exit', (code) => reject(new Error(`echo origin exited early with ${code}`)));
  });
  return received;
}

/**
 * One unconnected client socket (as DNS resolvers and QUIC stacks with several servers
 * use them) sends `first` to NETNS_V4, waits `pauseMs`, then sends `second` to OTHER_V4;
 * prints each reply's source and bytes. Bounded: gives up after 4 s past the pause.
 */
function twoDestinationsClient(pauseMs: number): string {
  return `
    const dgram = require('node:dgram');
    const socket = dgram.createSocket('udp4');
    const replies = [];
    const done = () => { process.stdout.write(JSON.stringify(replies) + '\\n'); socket.close(); };
    const overall = setTimeout(done, ${pauseMs} + 4000);
    socket.on('message', (payload, remote) => {
      replies.push({ from: remote.address + ':' + remote.port, text: payload.toString() });
      if (replies.length === 2) { clearTimeout(overall); done(); }
    });
    socket.bind(0, '${NETNS_V4}', () => {
      socket.send('first', ${ORIGIN_PORT}, '${NETNS_V4}');
      setTimeout(() => socket.send('second', ${ORIGIN_PORT}, '${OTHER_V4}'), ${pauseMs});
    });`;
}

/**
 * A connected client socket that sends `one`, then waits for a line on stdin, then sends
 * `two`; prints each reply. Bounded: gives up 8 s after starting.
 */
const stepClient = `
  const dgram = require('node:dgram');
  const socket = dgram.createSocket('udp4');
  const replies = [];
  const done = () => { process.stdout.write(JSON.stringify(replies) + '\\n'); socket.close(); process.stdin.destroy(); };
  const overall = setTimeout(done, 8000);
  socket.on('message', (payload) => {
    replies.push(payload.toString());
    process.stdout.write('reply\\n');
    if (replies.length === 2) { clearTimeout(overall); done(); }
  });
  socket.connect(${ORIGIN_PORT}, '${NETNS_V4}', () => {
    socket.send('one');
    process.stdin.once('data', () => socket.send('two'));
  });`;

describe.skipIf(skipKernelTests)('nftables backend, UDP flows under attack, in network namespaces', () => {
  beforeAll(assertKernelTestsCanRun);

  it('sends one socket’s datagrams to two destinations each to its own destination, as two flows', async () => {
    await using netns = await createNetns('udpatk-two');
    await netns.run('ip', ['addr', 'add', `${OTHER_V4}/24`, 'dev', 'lo']);
    const received = await startEcho(netns, [NETNS_V4, OTHER_V4]);
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000 });
    await vendor.ready;

    const replies = JSON.parse((await netns.run('node', ['-e', twoDestinationsClient(200)])).stdout) as { from: string; text: string }[];
    expect(replies).toEqual([
      { from: `${NETNS_V4}:${ORIGIN_PORT}`, text: 'first' },
      { from: `${OTHER_V4}:${ORIGIN_PORT}`, text: 'second' },
    ]);
    // Each datagram reached the origin it was sent to; the vendor judged each destination.
    expect(received.map((r) => [r.local, r.bytes])).toEqual([
      [`${NETNS_V4}:${ORIGIN_PORT}`, 5],
      [`${OTHER_V4}:${ORIGIN_PORT}`, 6],
    ]);
    expect(vendor.accepted.map((a) => a.destination.address)).toEqual([NETNS_V4, OTHER_V4]);
  });

  it('never relays a datagram to the destination of an older flow after conntrack forgot that flow (nor shows its reply as another address’s)', async () => {
    await using netns = await createNetns('udpatk-expiry');
    await netns.run('ip', ['addr', 'add', `${OTHER_V4}/24`, 'dev', 'lo']);
    const received = await startEcho(netns, [NETNS_V4, OTHER_V4]);
    // The vendor keeps an idle flow far longer than conntrack keeps its entry (a host with
    // shortened conntrack timeouts, or a vendor with a long udpIdleTimeoutMs).
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000 });
    await vendor.ready;
    await netns.run('sysctl', ['-w', 'net.netfilter.nf_conntrack_udp_timeout=1', 'net.netfilter.nf_conntrack_udp_timeout_stream=1']);

    // Past the pause the client's conntrack entry (to NETNS_V4) is gone; the same socket's
    // next datagram, to OTHER_V4, makes a new entry with the same reply tuple, so the
    // vendor's listener sees it from the same client address and port as the old flow.
    const replies = JSON.parse((await netns.run('node', ['-e', twoDestinationsClient(3000)])).stdout) as { from: string; text: string }[];
    await until(() => received.length === 2, 5000, 'both datagrams at an origin');
    // The second datagram was for OTHER_V4: it must reach OTHER_V4, not NETNS_V4.
    expect(received.map((r) => r.local)).toEqual([`${NETNS_V4}:${ORIGIN_PORT}`, `${OTHER_V4}:${ORIGIN_PORT}`]);
    expect(replies).toEqual([
      { from: `${NETNS_V4}:${ORIGIN_PORT}`, text: 'first' },
      { from: `${OTHER_V4}:${ORIGIN_PORT}`, text: 'second' },
    ]);
    // Two flows, each accepted (and so judged) with its own destination; the first was superseded.
    expect(vendor.accepted.map((a) => a.destination.address)).toEqual([NETNS_V4, OTHER_V4]);
    expect(vendor.accepted[1]!.source).toEqual(vendor.accepted[0]!.source);
    await until(() => vendor.closed.length >= 1, 5000, 'the first flow to end');
    expect(vendor.closed[0]!.endedBy).toBe('superseded');
  });

  it('keeps relaying a flow after an ICMP "fragmentation needed" or "host unreachable" about its onward datagrams (a router on a smaller path, or a spoofer)', async () => {
    await using netns = await createNetns('udpatk-icmp');
    const received = await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000 });
    await vendor.ready;
    const client = netns.spawn('node', ['-e', stepClient], { stdio: ['pipe', 'pipe', 'inherit'] });
    let output = '';
    client.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise((resolve) => client.once('exit', resolve));
    await until(() => output.includes('reply'), 5000, 'the first reply');
    // The vendor's onward socket is where the origin saw the datagram come from.
    const onward = received[0]!.from.split(':');
    const icmp = path.join(fixtures, 'icmp-error.attack.mjs');
    await netns.run('node', [icmp, onward[0]!, onward[1]!, NETNS_V4, String(ORIGIN_PORT), '4', '1280']);
    await netns.run('node', [icmp, onward[0]!, onward[1]!, NETNS_V4, String(ORIGIN_PORT), '1']);
    client.stdin!.write('go\n');
    await exited;
    expect(JSON.parse(output.trim().split('\n').at(-1)!)).toEqual(['one', 'two']);
    // One flow throughout, the second datagram on the same onward socket: the ICMP errors
    // cost nothing but (at most) the datagram they were about.
    expect(vendor.accepted).toHaveLength(1);
    expect(received.map((r) => r.from)).toEqual([received[0]!.from, received[0]!.from]);
    expect(vendor.closed).toEqual([]);
  });

  it('never passes to the client a datagram sent to the onward socket by anyone but the destination', async () => {
    await using netns = await createNetns('udpatk-spoof');
    const received = await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000 });
    await vendor.ready;
    const client = netns.spawn('node', ['-e', stepClient], { stdio: ['pipe', 'pipe', 'inherit'] });
    let output = '';
    client.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise((resolve) => client.once('exit', resolve));
    await until(() => output.includes('reply'), 5000, 'the first reply');
    const [address, port] = received[0]!.from.split(':');
    // Another local process, and another address, aim at the vendor's onward socket.
    for (const from of [NETNS_V4, '127.0.0.1']) {
      const spoof = `const s=require('dgram').createSocket('udp4');s.bind(0,'${from}',()=>s.send('spoof',${port},'${address}',()=>setTimeout(()=>s.close(),100)))`;
      await netns.run('node', ['-e', spoof]);
    }
    client.stdin!.write('go\n');
    await exited;
    expect(JSON.parse(output.trim().split('\n').at(-1)!)).toEqual(['one', 'two']);
    expect(vendor.accepted).toHaveLength(1);
  });

  it('gives a user a flow when another user holds every flow of the table: the largest holder’s least recently active flow is evicted', async () => {
    await using netns = await createNetns('udpatk-fair');
    const received = await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000, maxUdpFlows: 4 });
    await vendor.ready;
    // Another user (uid 65534) opens four flows, one datagram each, and keeps the sockets.
    const hold = `
      const dgram = require('node:dgram');
      const sockets = [];
      let sent = 0;
      for (let i = 0; i < Number(process.argv[1]); i++) {
        const socket = dgram.createSocket('udp4');
        sockets.push(socket);
        socket.connect(${ORIGIN_PORT}, '${NETNS_V4}', () => socket.send('hog', () => { if (++sent === sockets.length) process.stdout.write('sent\\n'); }));
      }
      const end = () => { for (const socket of sockets) socket.close(); process.exit(0); };
      process.stdin.on('end', end);
      process.stdin.resume();
      setTimeout(end, 15_000);`;
    const hog = (flows: number) => {
      const child = netns.spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'node', '-e', hold, String(flows)], { stdio: ['pipe', 'pipe', 'inherit'] });
      let output = '';
      child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
      return { child, sent: () => output.includes('sent') };
    };
    const first = hog(4);
    await until(() => first.sent() && vendor.accepted.length === 4, 5000, 'four flows of uid 65534');
    // The table is full. Root's client (another user) still gets its flow, and its echo.
    const { stdout } = await netns.run('node', [path.join(fixtures, 'udp-client.mjs'), NETNS_V4, String(ORIGIN_PORT), 'echo', '100']);
    expect(JSON.parse(stdout)).toMatchObject({ replies: [{ intact: true, bytes: 100, from: `${NETNS_V4}:${ORIGIN_PORT}` }] });
    expect(vendor.accepted).toHaveLength(5);
    await until(() => vendor.closed.length >= 1, 5000, 'an evicted flow');
    expect(vendor.closed.map((c) => c.endedBy)).toEqual(['evicted']);
    // The user holding the most flows gets no more: a fifth one of uid 65534 is refused.
    const second = hog(1);
    await until(() => second.sent() && vendor.rejected.length >= 1, 5000, 'the fifth flow sent and refused');
    expect(vendor.rejected.map((r) => r.code)).toEqual(['COPROXY_UDP_FLOW_LIMIT']);
    expect(vendor.accepted).toHaveLength(5);
    expect(received.filter((r) => r.bytes === 3)).toHaveLength(4);
    first.child.stdin!.end();
    second.child.stdin!.end();
  });

  it('leaves no redirected flow to whoever binds the UDP port of a vendor that closed, with another NAT chain on the host (another user squatting it gets nothing, and cannot answer as the origin)', async () => {
    await using netns = await createNetns('udpatk-squat');
    // Another NAT chain on the host (Docker's, another vendor's): with it the kernel's NAT
    // hook stays registered after the vendor's table goes, so conntrack entries made by the
    // vendor's redirect keep being translated to its port. Without any, none are.
    await netns.run('nft', ['add table ip host-nat; add chain ip host-nat output { type nat hook output priority 100; }']);
    const received = await startEcho(netns, [NETNS_V4]);
    const vendor = startVendor(netns, { udpIdleTimeoutMs: 60_000 });
    await vendor.ready;
    const listing = (await netns.run('nft', ['list', 'table', 'inet', 'coproxy-attacked'])).stdout;
    const port = Number(/ct mark set meta mark redirect to :(\d+)/.exec(listing)?.[1]);
    expect(port).toBeGreaterThan(0);
    const client = netns.spawn('node', ['-e', stepClient], { stdio: ['pipe', 'pipe', 'inherit'] });
    let output = '';
    client.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise((resolve) => client.once('exit', resolve));
    await until(() => output.includes('reply'), 5000, 'the first reply');
    await vendor.close(); // stopped or upgraded: its table is gone, its port free
    // Another user binds the freed port and answers whatever comes as if it were the origin.
    const squat = `
      const socket = require('node:dgram').createSocket('udp4');
      const got = [];
      socket.on('message', (payload, remote) => { got.push(payload.toString()); socket.send('spoofed', remote.port, remote.address); });
      socket.bind(${port}, '127.0.0.1', () => process.stdout.write('bound\\n'));
      process.stdin.on('end', () => { process.stdout.write(JSON.stringify(got) + '\\n'); socket.close(); process.exit(0); });
      process.stdin.resume();
      setTimeout(() => process.exit(0), 15_000);`;
    const squatter = netns.spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'node', '-e', squat], { stdio: ['pipe', 'pipe', 'inherit'] });
    let squatted = '';
    squatter.stdout!.on('data', (chunk: Buffer) => (squatted += chunk.toString()));
    const squatterExited = new Promise((resolve) => squatter.once('exit', resolve));
    await until(() => squatted.includes('bound'), 5000, 'the squatter to bind the port');
    client.stdin!.write('go\n');
    await exited;
    squatter.stdin!.end();
    await squatterExited;
    // The client's next datagram went to the origin itself, and the origin answered it.
    expect(JSON.parse(output.trim().split('\n').at(-1)!)).toEqual(['one', 'two']);
    expect(JSON.parse(squatted.trim().split('\n').at(-1)!)).toEqual([]);
    expect(received.map((r) => r.bytes)).toEqual([3, 3]);
  });
});
