import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { type OnwardDatagramSocket, connectDatagram } from '@coproxy/core';
import { firstValueFrom, take, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import type { HttpExchange, HttpProxyEvent } from './events.js';
import { type HttpProxy, createHttpProxy } from './proxy.js';
import { tempDir, uniqueId, until, within } from './test-support/harness.js';

// UDP flows on the embedded backend: the app sends through core's connectDatagram(), the
// proxy takes the flow on a `match.udpPorts` port. proxy-http reads no datagram protocol,
// so its `unrecognised` policy decides: relay (datagrams both ways, unchanged) or block.

interface UdpOrigin {
  readonly port: number;
  /** Every datagram the origin received, in order. */
  readonly received: Buffer[];
  close(): void;
}

/** A UDP echo origin on 127.0.0.1: each datagram goes back to its sender unchanged. */
async function udpEchoOrigin(): Promise<UdpOrigin> {
  const socket = dgram.createSocket('udp4');
  const received: Buffer[] = [];
  socket.on('message', (message, from) => {
    received.push(message);
    socket.send(message, from.port, from.address);
  });
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
  return { port: socket.address().port, received, close: () => socket.close() };
}

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function startUdpProxy(udpPort: number, unrecognised: 'block' | 'relay'): Promise<{ proxy: HttpProxy; registry: string; events: HttpProxyEvent[]; exchanges: HttpExchange[] }> {
  const registry = tempDir('coproxy-http-registry-');
  const proxy = createHttpProxy({ id: uniqueId('http-udp'), priority: 1, registry: registry.path, match: { ports: [1], udpPorts: [udpPort] }, unrecognised });
  const events: HttpProxyEvent[] = [];
  const exchanges: HttpExchange[] = [];
  const subscriptions = [proxy.events$.subscribe((event) => events.push(event)), proxy.exchanges$.subscribe((exchange) => exchanges.push(exchange))];
  cleanup.push(async () => {
    await proxy.close();
    for (const subscription of subscriptions) subscription.unsubscribe();
    registry[Symbol.dispose]();
  });
  await within(proxy.listening(), 20_000, 'the proxy to listen');
  return { proxy, registry: registry.path, events, exchanges };
}

function echo(socket: OnwardDatagramSocket, payload: Buffer): Promise<Buffer> {
  const reply = within(firstValueFrom(socket.datagrams$.pipe(take(1), toArray())), 5000, 'the echo');
  socket.send(payload);
  return reply.then(([datagram]) => datagram!);
}

describe('UDP flows (embedded)', () => {
  it('relays a UDP flow under the relay policy: every datagram intact both ways, one flow, logged and counted as unrecognised', async () => {
    const origin = await udpEchoOrigin();
    cleanup.push(() => origin.close());
    const under = await startUdpProxy(origin.port, 'relay');
    const socket = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: under.registry });
    cleanup.push(() => socket.close());

    // 0x00 first: no protocol either vendor knows. Sizes from 1 byte to past a jumbo MTU.
    const payloads = [Buffer.from([0x00]), Buffer.concat([Buffer.from([0x00]), randomBytes(1199)]), randomBytes(9000)];
    const replies: Buffer[] = [];
    for (const payload of payloads) replies.push(await echo(socket, payload));

    expect(replies).toEqual(payloads);
    expect(origin.received).toEqual(payloads);
    const accepted = under.events.filter((e) => e.type === 'accepted');
    expect(accepted).toHaveLength(1);
    expect(accepted[0]).toMatchObject({ transport: 'udp', state: 'NotRedirected', originalDestination: { port: origin.port } });
    const flowId = (accepted[0] as { connectionId: string }).connectionId;
    expect(under.events).toContainEqual({ type: 'unrecognised', connectionId: flowId, action: 'relay', reason: 'datagram', firstBytes: '00', transport: 'udp' });
    expect(under.events).toContainEqual({ type: 'connection-kind', connectionId: flowId, kind: 'opaque', protocol: 'unrecognised' });
    const metrics = await under.proxy.metrics.registry.metrics();
    expect(metrics).toMatch(/coproxy_http_unrecognised_total\{action="relay"\} 1\n/);

    // The flow ends with the listener; the exchange log then has its counts.
    await under.proxy.close();
    await until(() => under.exchanges.length === 1, 5000, 'the UDP exchange');
    const bytes = payloads.reduce((sum, p) => sum + p.length, 0);
    expect(under.exchanges[0]).toMatchObject({
      kind: 'opaque',
      transport: 'udp',
      connection: { id: flowId },
      tunnel: { bytesFromClient: bytes, bytesToClient: bytes },
      datagrams: { fromClient: 3, toClient: 3 },
    });
    expect(under.exchanges[0]?.error).toBeUndefined();
  });

  it('rejects a UDP flow under the block policy (the default): nothing reaches the origin, nothing comes back', async () => {
    const origin = await udpEchoOrigin();
    cleanup.push(() => origin.close());
    const under = await startUdpProxy(origin.port, 'block');
    const socket = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: under.registry });
    cleanup.push(() => socket.close());
    const replies: Buffer[] = [];
    socket.datagrams$.subscribe((datagram) => replies.push(datagram));

    socket.send(Buffer.from('\x00hello'));
    await until(() => under.events.some((e) => e.type === 'closed'), 5000, 'the flow to be closed');

    const closed = under.events.find((e) => e.type === 'closed');
    expect(closed).toMatchObject({ transport: 'udp', endedBy: 'rejected' });
    expect(under.events).toContainEqual(expect.objectContaining({ type: 'unrecognised', action: 'block', reason: 'datagram', firstBytes: Buffer.from('\x00hello').toString('hex') }));
    expect(under.events.some((e) => e.type === 'onward-connected')).toBe(false);
    expect(origin.received).toEqual([]);
    expect(replies).toEqual([]);
    const metrics = await under.proxy.metrics.registry.metrics();
    expect(metrics).toMatch(/coproxy_http_unrecognised_total\{action="block"\} 1\n/);
    expect(metrics).toMatch(/coproxy_http_connections_total\{kind="blocked"\} 1\n/);
  });

  it('ends a relayed flow whose origin answers ICMP port unreachable, logs why, and keeps serving the next flow', async () => {
    const origin = await udpEchoOrigin();
    cleanup.push(() => origin.close());
    // A port nothing listens on: bound, then closed, so the kernel answers port unreachable.
    const gone = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => gone.bind(0, '127.0.0.1', resolve));
    const deadPort = gone.address().port;
    await new Promise<void>((resolve) => gone.close(resolve));
    const registry = tempDir('coproxy-http-registry-');
    const proxy = createHttpProxy({ id: uniqueId('http-udp'), priority: 1, registry: registry.path, match: { ports: [1], udpPorts: [deadPort, origin.port] }, unrecognised: 'relay' });
    const exchanges: HttpExchange[] = [];
    const subscription = proxy.exchanges$.subscribe((exchange) => exchanges.push(exchange));
    cleanup.push(async () => {
      await proxy.close();
      subscription.unsubscribe();
      registry[Symbol.dispose]();
    });
    await within(proxy.listening(), 20_000, 'the proxy to listen');

    const dead = await connectDatagram({ host: '127.0.0.1', port: deadPort, registry: registry.path });
    cleanup.push(() => dead.close());
    dead.send(Buffer.from('\x00anyone?'));
    await until(() => exchanges.length === 1, 5000, 'the failed UDP exchange');
    expect(exchanges[0]).toMatchObject({ kind: 'opaque', transport: 'udp', error: { code: 'ECONNREFUSED' }, datagrams: { fromClient: 1, toClient: 0 } });

    const live = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => live.close());
    const payload = Buffer.concat([Buffer.from([0x00]), randomBytes(700)]);
    expect(await echo(live, payload)).toEqual(payload);
  });
});
