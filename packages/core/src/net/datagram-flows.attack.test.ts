import dgram from 'node:dgram';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from '../testing/harness.js';
import { type DatagramFlowEndpoint, DatagramFlowTable } from './datagram-flows.js';

/**
 * An attacker's pass over the flow table's queue (issue #18): datagrams that arrive before
 * the vendor subscribes (it dials onward first, as the AcceptedDatagramFlow example does,
 * or never subscribes) are held. The bound was 64 datagrams per flow, whatever their size:
 * 64 × 64 KiB is 4 MiB a flow, 16 GiB over the 4,096 flows a redirector allows.
 */
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

const DATAGRAM = Buffer.alloc(60_000, 0x61);
/** The bounds core's README states: per flow, and per listening socket's table. */
const MAX_QUEUED_BYTES_PER_FLOW = 256 * 1024;
const MAX_QUEUED_BYTES_PER_TABLE = 16 * 1024 * 1024;

/** The redirector's defaults (64 datagrams queued, 4,096 flows); nobody subscribes. */
async function table() {
  const listener = await bound();
  const opened: DatagramFlowEndpoint[] = [];
  new DatagramFlowTable(listener, { idleTimeoutMs: 60_000, maxFlows: 4096, maxQueued: 64, opened: (flow) => void opened.push(flow), refused: () => undefined });
  return { port: listener.address().port, opened };
}

/** Sends `count` big datagrams one at a time (each read before the next, so the kernel's receive buffer drops none). */
async function flood(client: dgram.Socket, port: number, flow: () => DatagramFlowEndpoint | undefined, count: number): Promise<DatagramFlowEndpoint> {
  for (let i = 0; i < count; i++) {
    client.send(DATAGRAM, port, '127.0.0.1');
    await until(() => flow()?.counts.datagramsIn === i + 1, 5000, `datagram ${i + 1}`);
  }
  return flow()!;
}

/** What a subscriber arriving now would be handed from the queue. */
function queuedBytes(flow: DatagramFlowEndpoint): number {
  let bytes = 0;
  flow.datagrams$.subscribe((payload) => (bytes += payload.length)).unsubscribe();
  return bytes;
}

describe('datagram flow table: the queue before the first subscriber (attack)', () => {
  it('holds at most 256 KiB of big datagrams for one flow, and counts the rest dropped', async () => {
    const { port, opened } = await table();
    const client = await bound();
    const flow = await flood(client, port, () => opened[0], 64);
    const held = queuedBytes(flow);
    expect(held).toBeLessThanOrEqual(MAX_QUEUED_BYTES_PER_FLOW);
    expect(held).toBeGreaterThan(0);
    expect(flow.counts.dropped).toBe(64 - held / DATAGRAM.length);
  });

  it('holds at most 16 MiB over many flows, each of them within its own bound', async () => {
    const { port, opened } = await table();
    const perFlow = Math.floor(MAX_QUEUED_BYTES_PER_FLOW / DATAGRAM.length);
    const flows = Math.ceil(MAX_QUEUED_BYTES_PER_TABLE / (perFlow * DATAGRAM.length)) + 4;
    for (let n = 0; n < flows; n++) {
      const client = await bound();
      await flood(client, port, () => opened[n], perFlow);
    }
    const held = opened.map(queuedBytes);
    expect(held.reduce((sum, bytes) => sum + bytes, 0)).toBeLessThanOrEqual(MAX_QUEUED_BYTES_PER_TABLE);
    // The first flows were served in full; the last ones found the table's share spent.
    expect(held[0]).toBe(perFlow * DATAGRAM.length);
    expect(opened.at(-1)!.counts.dropped).toBe(perFlow);
  }, 60_000);

  it('gives the table’s share back when a flow is subscribed or ends, so later flows queue again', async () => {
    const { port, opened } = await table();
    const perFlow = Math.floor(MAX_QUEUED_BYTES_PER_FLOW / DATAGRAM.length);
    const flows = Math.ceil(MAX_QUEUED_BYTES_PER_TABLE / (perFlow * DATAGRAM.length));
    for (let n = 0; n < flows; n++) await flood(await bound(), port, () => opened[n], perFlow);
    for (const flow of opened) flow.end('closed');
    const late = await flood(await bound(), port, () => opened[flows], 1);
    expect(late.counts.dropped).toBe(0);
    expect(queuedBytes(late)).toBe(DATAGRAM.length);
  }, 60_000);
});
