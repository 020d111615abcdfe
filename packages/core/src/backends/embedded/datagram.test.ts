import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { firstValueFrom, type Subscription, take, toArray } from 'rxjs';
import { afterEach, describe, expect, it } from 'vitest';
import { RedirectRecords } from '../../model/redirect-records.js';
import type { OnwardDatagramSocket } from '../../net/onward-datagram.js';
import { createRedirector } from '../../redirector/redirector.js';
import type { AcceptedDatagramFlow } from '../../redirector/datagram-flow.js';
import type { RedirectorEvent } from '../../redirector/redirector-events.js';
import { entryKey, tempRegistry, until } from '../../testing/harness.js';
import { connectDatagram } from './datagram-connect.js';
import { encodeDatagramHeader } from './datagram-header.js';
import { encodeFlowHeader } from './flow-header.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;
const cleanup: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

/** A UDP echo origin on 127.0.0.1 that records who sent each datagram. */
async function echoOrigin(): Promise<{ port: number; from: string[] }> {
  const socket = dgram.createSocket('udp4');
  const from: string[] = [];
  socket.on('message', (payload, remote) => {
    from.push(`${remote.address}:${remote.port}`);
    socket.send(payload, remote.port, remote.address);
  });
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  cleanup.push(() => void socket.close());
  return { port: socket.address().port, from };
}

/** A pass-through UDP vendor on the embedded backend. */
async function vendor(id: string, priority: number, registry: string, originPort: number) {
  const redirector = createRedirector({ id, priority, registry, match: { udpPorts: [originPort] } });
  const accepted: AcceptedDatagramFlow[] = [];
  const events: RedirectorEvent[] = [];
  const subscriptions: Subscription[] = [redirector.events$.subscribe((event) => events.push(event))];
  subscriptions.push(
    redirector.accepted$.subscribe((flow) => {
      if (flow.transport !== 'udp') return void flow.socket.destroy();
      accepted.push(flow);
      void flow.connectOnward().then((onward) => {
        flow.datagrams$.subscribe({ next: (payload) => onward.send(payload), complete: () => onward.close() });
        onward.datagrams$.subscribe((payload) => flow.send(payload));
      });
    }),
  );
  await redirector.installed();
  cleanup.push(async () => {
    for (const subscription of subscriptions) subscription.unsubscribe();
    await redirector.close();
  });
  const entry = JSON.parse(fs.readFileSync(path.join(registry, `${id}.json`), 'utf8')) as { udpListen: { host: string; port: number } };
  return { redirector, accepted, events, udpListen: entry.udpListen };
}

async function exchange(socket: OnwardDatagramSocket, payloads: readonly Buffer[]): Promise<Buffer[]> {
  const replies = firstValueFrom(socket.datagrams$.pipe(take(payloads.length), toArray()));
  for (const payload of payloads) socket.send(payload);
  return replies;
}

describe('embedded backend, UDP flows', () => {
  it('chains an app datagram flow through two vendors, each accepting it once, bytes intact both ways', async () => {
    using registry = tempRegistry();
    const origin = await echoOrigin();
    const first = await vendor(uniqueId('first'), 10, registry.path, origin.port);
    const second = await vendor(uniqueId('second'), 20, registry.path, origin.port);

    const socket = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => socket.close());
    // One at a time: UDP on loopback keeps order, but the test does not lean on it.
    const payloads = [randomBytes(1), randomBytes(1200), randomBytes(9000)];
    const replies: Buffer[] = [];
    for (const payload of payloads) replies.push(...(await exchange(socket, [payload])));
    expect(replies).toEqual(payloads);

    expect(first.accepted.map((f) => [f.state, f.records.redirectedBy])).toEqual([['NotRedirected', [first.redirector.id]]]);
    expect(second.accepted.map((f) => [f.state, f.records.redirectedBy])).toEqual([['RedirectedByOther', [first.redirector.id, second.redirector.id]]]);
    expect(first.accepted[0]!.originalDestination).toEqual({ address: '127.0.0.1', port: origin.port, family: 4 });
    expect(first.accepted[0]!.source).toMatchObject({ address: '127.0.0.1', port: socket.local.port, pid: process.pid });
    // The origin heard one flow, from the second vendor's onward socket.
    expect(origin.from).toHaveLength(3);
    expect(new Set(origin.from).size).toBe(1);
    expect(origin.from[0]).not.toBe(`127.0.0.1:${socket.local.port}`);
  });

  it('goes straight to the destination when no redirector names the UDP port, and TCP rules never take UDP', async () => {
    using registry = tempRegistry();
    const origin = await echoOrigin();
    const tcpOnly = createRedirector({ id: uniqueId('tcp-only'), priority: 1, registry: registry.path, match: { ports: [origin.port] } });
    const subscription = tcpOnly.accepted$.subscribe();
    await tcpOnly.installed();
    cleanup.push(async () => {
      subscription.unsubscribe();
      await tcpOnly.close();
    });
    const socket = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => socket.close());
    expect(await exchange(socket, [Buffer.from('direct')])).toEqual([Buffer.from('direct')]);
    expect(origin.from).toEqual([`127.0.0.1:${socket.local.port}`]);
  });

  it('refuses datagrams without the registry secret with typed events and keeps serving; a header naming another flow begins a new flow', async () => {
    using registry = tempRegistry();
    const origin = await echoOrigin();
    const solo = await vendor(uniqueId('solo'), 10, registry.path, origin.port);
    const raw = dgram.createSocket('udp4');
    cleanup.push(() => void raw.close());
    raw.bind(0, '127.0.0.1');
    await once(raw, 'listening');
    const flow = {
      source: { address: '127.0.0.1', port: raw.address().port },
      destination: { address: '127.0.0.1', port: origin.port, family: 4 as const },
      records: RedirectRecords.empty.withRedirect(solo.redirector.id),
    };
    const key = entryKey(registry.path, solo.redirector.id);
    const send = (bytes: Buffer): void => raw.send(bytes, solo.udpListen.port, solo.udpListen.host);
    const rejectedCodes = (): string[] => solo.events.flatMap((e) => (e.type === 'rejected' ? [e.error.code] : []));

    send(Buffer.from('not a header at all'));
    const altered = encodeDatagramHeader(flow, key);
    altered[altered.length - 1] = altered.at(-1)! ^ 0xff; // the tag's last byte
    send(Buffer.concat([altered, Buffer.from('x')]));
    send(Buffer.concat([encodeFlowHeader(flow, key), Buffer.from('x')])); // a TCP (STREAM) header
    await until(() => rejectedCodes().length === 3, 5000, 'three refusals');
    expect(rejectedCodes()).toEqual(['COPROXY_PROXY_HEADER_MALFORMED', 'COPROXY_PEER_NOT_AUTHORISED', 'COPROXY_PROXY_HEADER_MALFORMED']);
    expect(solo.accepted).toHaveLength(0);

    // A good first datagram opens the flow; a later one from the same port naming other
    // records (a new socket that got the port, after another vendor) ends it and begins a
    // flow of its own, accepted and relayed on its own: nothing of it joins the first flow.
    const reply = once(raw, 'message');
    send(Buffer.concat([encodeDatagramHeader(flow, key), Buffer.from('one')]));
    expect(String((await reply)[0])).toBe('one');
    const other = { ...flow, records: RedirectRecords.empty.withRedirect('another-vendor').withRedirect(solo.redirector.id) };
    const second = once(raw, 'message');
    send(Buffer.concat([encodeDatagramHeader(other, key), Buffer.from('two')]));
    expect(String((await second)[0])).toBe('two');
    expect(solo.accepted.map((f) => f.records.redirectedBy)).toEqual([[solo.redirector.id], ['another-vendor', solo.redirector.id]]);
    await until(() => solo.events.some((e) => e.type === 'closed' && e.connectionId === solo.accepted[0]!.id), 5000, 'the first flow closed');
    expect(solo.events.find((e) => e.type === 'closed' && e.connectionId === solo.accepted[0]!.id)).toMatchObject({ endedBy: 'superseded' });
    expect(rejectedCodes()).toHaveLength(3);
    expect(origin.from).toHaveLength(2); // each flow through its own onward socket
  });

  // I7: UDP has no peer credentials; the listener asks sock_diag who owns the sending
  // socket. A process of another user holding a valid header (a leaked secret) is refused.
  it.skipIf(process.getuid?.() !== 0)('refuses a flow whose sending socket belongs to another user, even with a valid header', async () => {
    using registry = tempRegistry();
    const origin = await echoOrigin();
    const solo = await vendor(uniqueId('owner'), 10, registry.path, origin.port);
    const flow = {
      source: { address: '127.0.0.1', port: 40000 },
      destination: { address: '127.0.0.1', port: origin.port, family: 4 as const },
      records: RedirectRecords.empty.withRedirect(solo.redirector.id),
    };
    const datagram = Buffer.concat([encodeDatagramHeader(flow, entryKey(registry.path, solo.redirector.id)), Buffer.from('leaked')]);
    // Plain node:dgram as uid 65534: a connected socket, so it stays bound until the send is done.
    const script = `const s=require('dgram').createSocket('udp4');s.connect(${solo.udpListen.port},'127.0.0.1',()=>s.send(Buffer.from('${datagram.toString('hex')}','hex'),()=>setTimeout(()=>s.close(),500)))`;
    await new Promise<void>((resolve, reject) =>
      execFile(process.execPath, ['-e', script], { uid: 65534, gid: 65534, timeout: 10_000 }, (error) => (error === null ? resolve() : reject(new Error(`the uid 65534 sender failed: ${error.message}`)))),
    );
    await until(() => solo.events.some((e) => e.type === 'rejected' || e.type === 'accepted'), 5000, 'the refusal');
    const rejected = solo.events.flatMap((e) => (e.type === 'rejected' ? [e.error] : []));
    expect(rejected).toEqual([expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'peer-uid', peerUid: 65534 })]);
    expect(solo.accepted).toHaveLength(0);
    expect(origin.from).toEqual([]);
  });

  it('ends open UDP flows and goes direct once the redirector is closed; a flow also ends when idle', async () => {
    using registry = tempRegistry();
    const origin = await echoOrigin();
    const id = uniqueId('brief');
    const redirector = createRedirector({ id, priority: 1, registry: registry.path, match: { udpPorts: [origin.port] }, udpIdleTimeoutMs: 100 });
    const events: RedirectorEvent[] = [];
    const ended: string[] = [];
    redirector.events$.subscribe((event) => events.push(event));
    const subscription = redirector.accepted$.subscribe((flow) => {
      if (flow.transport !== 'udp') return;
      void flow.connectOnward().then((onward) => {
        // One subscription: the datagrams held for the flow go to the first subscriber.
        flow.datagrams$.subscribe({ next: (payload) => onward.send(payload), complete: () => ended.push(flow.id) });
        onward.datagrams$.subscribe((payload) => flow.send(payload));
      });
    });
    await redirector.installed();
    cleanup.push(() => redirector.close());

    const idle = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => idle.close());
    expect(await exchange(idle, [Buffer.from('a')])).toEqual([Buffer.from('a')]);
    await until(() => ended.length === 1, 5000, 'the idle flow to end');
    expect(events.find((e) => e.type === 'closed')).toMatchObject({ transport: 'udp', endedBy: 'idle', datagramsFromClient: 1, datagramsToClient: 1 });

    const open = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => open.close());
    expect(await exchange(open, [Buffer.from('b')])).toEqual([Buffer.from('b')]);
    subscription.unsubscribe();
    expect(ended).toHaveLength(2);
    expect(events.filter((e) => e.type === 'closed').at(-1)).toMatchObject({ endedBy: 'listener-closed' });
    expect(fs.existsSync(path.join(registry.path, `${id}.json`))).toBe(false);
    const direct = await connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    cleanup.push(() => direct.close());
    expect(await exchange(direct, [Buffer.from('c')])).toEqual([Buffer.from('c')]);
    expect(origin.from.at(-1)).toBe(`127.0.0.1:${direct.local.port}`);
  });
});
