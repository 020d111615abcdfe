import dgram from 'node:dgram';
import { once } from 'node:events';
import { firstValueFrom, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from '../testing/harness.js';
import { type DatagramFlowEndpoint, DatagramFlowTable, type DatagramPeer } from './datagram-flows.js';

const sockets: dgram.Socket[] = [];
afterEach(() => {
  for (const socket of sockets.splice(0)) socket.close();
});

async function bound(): Promise<dgram.Socket> {
  const socket = dgram.createSocket('udp4');
  sockets.push(socket);
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  return socket;
}

async function setup(options: { maxFlows?: number; maxQueued?: number; idleTimeoutMs?: number } = {}) {
  const listener = await bound();
  const opened: DatagramFlowEndpoint[] = [];
  const refused: { peer: DatagramPeer; kind: string }[] = [];
  const table = new DatagramFlowTable(listener, {
    idleTimeoutMs: options.idleTimeoutMs ?? 60_000,
    maxFlows: options.maxFlows ?? 16,
    maxQueued: options.maxQueued ?? 8,
    opened: (flow) => void opened.push(flow),
    refused: (peer, reason) => void refused.push({ peer, kind: reason.kind }),
  });
  return { listener, port: listener.address().port, table, opened, refused };
}

describe('datagram flow table', () => {
  it('makes one flow per client address and port, in arrival order, and answers each client on its own', async () => {
    const { port, opened } = await setup();
    const [a, b] = [await bound(), await bound()];
    for (const [client, text] of [[a, 'a1'], [b, 'b1'], [a, 'a2'], [a, 'a3'], [b, 'b2']] as const) client.send(text, port, '127.0.0.1');
    await until(() => opened.length === 2 && opened.every((flow) => flow.counts.datagramsIn >= 2), 5000, 'both flows');
    await until(() => opened[0]!.counts.datagramsIn === 3, 5000, 'a3');
    const flowA = opened.find((flow) => flow.peer.port === a.address().port)!;
    flowA.end('closed');
    expect((await firstValueFrom(flowA.datagrams$.pipe(toArray()))).map(String)).toEqual(['a1', 'a2', 'a3']);
    const flowB = opened.find((flow) => flow.peer.port === b.address().port)!;
    const reply = once(b, 'message');
    flowB.send(Buffer.from('to-b'));
    expect(String((await reply)[0])).toBe('to-b');
    expect(flowB.counts).toMatchObject({ datagramsIn: 2, datagramsOut: 1, bytesOut: 4 });
  });

  it('holds datagrams until the first subscriber, drops beyond the bound and counts them', async () => {
    const { port, opened } = await setup({ maxQueued: 2 });
    const client = await bound();
    for (const text of ['1', '2', '3', '4']) client.send(text, port, '127.0.0.1');
    await until(() => opened[0]?.counts.datagramsIn === 4, 5000, 'four datagrams');
    const flow = opened[0]!;
    const seen: string[] = [];
    flow.datagrams$.subscribe((payload) => seen.push(String(payload)));
    expect(seen).toEqual(['1', '2']);
    expect(flow.counts.dropped).toBe(2);
    client.send('5', port, '127.0.0.1');
    await until(() => seen.length === 3, 5000, 'the live datagram');
    expect(seen).toEqual(['1', '2', '5']);
  });

  it('refuses a new client once full, while the open flow keeps working, and takes it once a flow ends', async () => {
    const { port, opened, refused } = await setup({ maxFlows: 1 });
    const [a, b] = [await bound(), await bound()];
    a.send('a', port, '127.0.0.1');
    await until(() => opened.length === 1, 5000, 'first flow');
    b.send('b', port, '127.0.0.1');
    await until(() => refused.length === 1, 5000, 'refusal');
    expect(refused[0]).toMatchObject({ kind: 'full', peer: { port: b.address().port } });
    opened[0]!.end('closed');
    b.send('b', port, '127.0.0.1');
    await until(() => opened.length === 2, 5000, 'second flow');
    expect(opened[1]!.peer.port).toBe(b.address().port);
  });

  it('ends a flow after its idle time and completes its stream', async () => {
    const { port, opened, table } = await setup({ idleTimeoutMs: 50 });
    const client = await bound();
    client.send('x', port, '127.0.0.1');
    await until(() => opened.length === 1, 5000, 'flow');
    const ended = new Promise((resolve) => opened[0]!.onEnd(resolve));
    expect(await ended).toBe('idle');
    expect(table.size).toBe(0);
  });

  it('ends a flow whose setup threw, reporting it, and ends every flow on close', async () => {
    const listener = await bound();
    const refused: unknown[] = [];
    const flows: DatagramFlowEndpoint[] = [];
    let fail = true;
    const table = new DatagramFlowTable(listener, {
      idleTimeoutMs: 60_000,
      maxFlows: 4,
      maxQueued: 4,
      opened: (flow) => {
        flows.push(flow);
        if (fail) throw new Error('no conntrack entry');
      },
      refused: (_peer, reason) => void refused.push(reason),
    });
    const client = await bound();
    client.send('x', listener.address().port, '127.0.0.1');
    await until(() => refused.length === 1, 5000, 'refusal');
    expect(flows[0]!.ended).toBe('failed');
    fail = false;
    client.send('y', listener.address().port, '127.0.0.1');
    await until(() => flows.length === 2, 5000, 'a new flow');
    table.close();
    expect(flows[1]!.ended).toBe('listener-closed');
  });
});
