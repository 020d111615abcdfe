import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Installation } from '../backends/backend.js';
import { embeddedBackend } from '../backends/embedded/embedded-backend.js';
import { encodeFlowHeader } from '../backends/embedded/flow-header.js';
import { connect } from '../backends/embedded/connect.js';
import { relay } from '../net/relay.js';
import { RedirectRecords } from '../model/redirect-records.js';
import { entryKey, passThrough, startEchoOrigin, tempRegistry, until, type Acceptance } from '../testing/harness.js';
import type { AcceptedConnection } from './accepted-connection.js';
import type { RedirectorEvent } from './redirector-events.js';
import { createRedirector } from './redirector.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

afterEach(() => {
  vi.restoreAllMocks();
});

/** What a client sees of its connection: whether it has closed, and the error if it was reset. */
function watchClose(socket: net.Socket): { readonly closed: boolean; readonly error: Error | undefined } {
  const seen: { closed: boolean; error: Error | undefined } = { closed: false, error: undefined };
  socket.on('error', (error) => (seen.error = error));
  socket.once('close', () => (seen.closed = true));
  socket.resume();
  return seen;
}

/** Resolves with the error code a fresh connection to `port` meets ('ECONNREFUSED' when nothing listens). */
function dialOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? String(error)));
  });
}

/**
 * Lets the embedded backend's next install run for real (listener up, entry published)
 * and then holds it back from the redirector until `release()`: a slow install, so the
 * test can tear down or subscribe while it is in flight.
 */
function holdNextInstall(): { readonly done: Promise<Installation>; release(): void } {
  const install = embeddedBackend.install.bind(embeddedBackend);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  let reportDone!: (installation: Installation) => void;
  const done = new Promise<Installation>((resolve) => (reportDone = resolve));
  vi.spyOn(embeddedBackend, 'install').mockImplementationOnce(async (spec, sink) => {
    const installation = await install(spec, sink);
    reportDone(installation);
    await gate;
    return installation;
  });
  return { done, release };
}

/** A header as the connector writes it, signed with the key from the redirector's registry entry. */
const flowHeaderFor = (registry: string, redirectorId: string, port: number): Buffer =>
  encodeFlowHeader(
    {
      source: { address: '127.0.0.1', port: 40000 },
      destination: { address: '127.0.0.1', port, family: 4 },
      records: RedirectRecords.empty.withRedirect(redirectorId),
    },
    entryKey(registry, redirectorId),
  );

describe('tearing a redirector down', () => {
  // close() letting established flows finish is in redirector.test.ts.
  it('cuts open connections on destroy(): the client sees its connection close', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const r = createRedirector({ id: uniqueId('cut'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    passThrough(r, log);
    await r.installed();
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    const client = watchClose(socket);
    socket.write('FLOW cut\n');
    await until(() => log.length === 1, 5000, 'the flow to be accepted');

    r.destroy();

    // The client never ends its side: only the redirector can have closed the connection.
    await until(() => client.closed, 5000, 'the client connection to close');
  });

  it('closes a connection still sending its PROXY header when the last subscriber leaves', async () => {
    using registry = tempRegistry();
    const r = createRedirector({ id: uniqueId('half'), priority: 1, registry: registry.path, headerTimeoutMs: 60_000 });
    await using _r = r;
    const accepted: AcceptedConnection[] = [];
    const subscription = r.accepted$.subscribe((connection) => accepted.push(connection));
    const { port } = await r.installed();
    const header = flowHeaderFor(registry.path, r.id, 9);

    const halfRead = net.connect(port, '127.0.0.1');
    const halfReadSeen = watchClose(halfRead);
    await new Promise((resolve) => halfRead.once('connect', resolve));
    halfRead.write(header.subarray(0, 20));
    // The listener accepts in arrival order: once a complete flow that connected later has
    // been handed over, the half-read connection is in the listener's hands too.
    const complete = net.connect(port, '127.0.0.1');
    complete.on('error', () => complete.destroy());
    complete.write(header);
    await until(() => accepted.length === 1, 5000, 'the complete flow');
    expect(halfReadSeen.closed).toBe(false);

    subscription.unsubscribe();

    await until(() => halfReadSeen.closed, 5000, 'the half-read connection to be closed');
    expect(accepted[0]!.socket.destroyed).toBe(false); // a flow already handed over finishes on its own
    complete.destroy();
    accepted[0]!.socket.destroy();
  });

  it('does not install at all when subscribed and unsubscribed in the same tick', async () => {
    using registry = tempRegistry();
    const install = vi.spyOn(embeddedBackend, 'install');
    const r = createRedirector({ id: uniqueId('blink'), priority: 1, registry: registry.path });
    const events: RedirectorEvent['type'][] = [];
    r.events$.subscribe((event) => events.push(event.type));

    r.accepted$.subscribe().unsubscribe();
    await r.close(); // settles once any install in flight has been undone

    expect(install).not.toHaveBeenCalled(); // no listener was bound, not even briefly
    expect(fs.readdirSync(registry.path)).toEqual([]);
    expect(events).toEqual([]);
  });

  it('undoes an install that completes after its subscriber left: no entry stays and the port stops listening', async () => {
    using registry = tempRegistry();
    const held = holdNextInstall();
    const r = createRedirector({ id: uniqueId('late'), priority: 1, registry: registry.path });
    const events: RedirectorEvent['type'][] = [];
    r.events$.subscribe((event) => events.push(event.type));
    const entry = path.join(registry.path, `${r.id}.json`);
    const subscription = r.accepted$.subscribe();
    const { listening } = await held.done;
    expect(fs.existsSync(entry)).toBe(true);
    expect(await dialOutcome(listening.port)).toBe('connected');

    subscription.unsubscribe();
    held.release();
    await r.close();

    expect(fs.readdirSync(registry.path)).toEqual([]);
    expect(await dialOutcome(listening.port)).toBe('ECONNREFUSED');
    expect(r.listening).toBeUndefined();
    expect(events).toEqual([]); // never announced as installed
  });

  it('installs a resubscription made in the same tick as the unsubscription, with exactly one entry', async () => {
    using registry = tempRegistry();
    await using r = createRedirector({ id: uniqueId('again'), priority: 1, registry: registry.path });

    r.accepted$.subscribe().unsubscribe();
    const resubscription = r.accepted$.subscribe();
    const listening = await r.installed();

    expect(fs.readdirSync(registry.path)).toEqual([`${r.id}.json`]);
    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, `${r.id}.json`), 'utf8')) as { listen: { port: number } };
    expect(entry.listen.port).toBe(listening.port);
    resubscription.unsubscribe();
    expect(fs.readdirSync(registry.path)).toEqual([]);
    expect(await dialOutcome(listening.port)).toBe('ECONNREFUSED');
  });

  it('makes a resubscription wait until a late install has been undone, then installs it', async () => {
    using registry = tempRegistry();
    const held = holdNextInstall();
    await using r = createRedirector({ id: uniqueId('queue'), priority: 1, registry: registry.path });
    const first = r.accepted$.subscribe();
    const late = await held.done;
    first.unsubscribe();

    const errors: unknown[] = [];
    const second = r.accepted$.subscribe({ error: (error: unknown) => errors.push(error) });
    const installed = r.installed();
    // Listening and publishing take no I/O round trip: an install that did not wait for the
    // late one to be undone would have met its entry (and failed) within this turn.
    await new Promise((resolve) => setImmediate(resolve));
    expect(errors).toEqual([]);
    held.release();
    const listening = await installed;

    expect(errors).toEqual([]);
    expect(listening.port).not.toBe(late.listening.port);
    expect(fs.readdirSync(registry.path)).toEqual([`${r.id}.json`]);
    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, `${r.id}.json`), 'utf8')) as { listen: { port: number } };
    expect(entry.listen.port).toBe(listening.port);
    expect(await dialOutcome(late.listening.port)).toBe('ECONNREFUSED');
    second.unsubscribe();
  });

  it('frees the id on close(): a new redirector with the same id installs at once and takes the traffic', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const id = uniqueId('reuse');
    const r = createRedirector({ id, priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    r.accepted$.subscribe();
    await r.installed();

    await r.close();
    await using again = createRedirector({ id, priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    const subscription = passThrough(again, log);
    const listening = await again.installed();

    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, `${id}.json`), 'utf8')) as { listen: { port: number } };
    expect(entry.listen.port).toBe(listening.port);
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    expect(socket.remotePort).toBe(listening.port);
    socket.end('FLOW reused\n');
    await until(() => log.length === 1, 5000, 'the new redirector to accept the flow');
    expect(log[0]!.redirectorId).toBe(id);
    socket.destroy();
    subscription.unsubscribe();
  });

  it('lets a successor take the id at once after close(), installing only once the install in flight is undone', async () => {
    using registry = tempRegistry();
    const held = holdNextInstall();
    const id = uniqueId('inflight');
    const r = createRedirector({ id, priority: 1, registry: registry.path });
    r.accepted$.subscribe({ error: () => undefined });
    await held.done;

    const closing = r.close();
    await using again = createRedirector({ id, priority: 1, registry: registry.path });
    const subscription = again.accepted$.subscribe();
    let installed = false;
    const successor = again.installed().then((listening) => ((installed = true), listening));
    await new Promise((resolve) => setImmediate(resolve));
    expect(installed).toBe(false); // waits for its predecessor
    held.release();
    await closing;

    await expect(successor).resolves.toMatchObject({ address: '127.0.0.1' });
    expect(fs.readdirSync(registry.path)).toEqual([`${id}.json`]);
    subscription.unsubscribe();
  });

  it('still refuses a second live redirector with the same id', () => {
    const id = uniqueId('twice');
    const r = createRedirector({ id, priority: 1 });
    expect(() => createRedirector({ id, priority: 2 })).toThrow(expect.objectContaining({ code: 'COPROXY_REDIRECTOR_ID_IN_USE' }));
    r.destroy();
    expect(createRedirector({ id, priority: 2 }).id).toBe(id); // destroy() frees it at once
  });

  it('drops a connection that reaches the listener after its subscriber left', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const held = holdNextInstall();
    const r = createRedirector({ id: uniqueId('after'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const accepted: AcceptedConnection[] = [];
    const subscription = r.accepted$.subscribe((connection) => accepted.push(connection));
    // The install is done but not yet reported: the entry and the listener are up while
    // the subscriber is already gone.
    const late = await held.done;
    subscription.unsubscribe();

    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    expect(socket.remotePort).toBe(late.listening.port);
    const client = watchClose(socket);
    socket.write('FLOW too-late\n');

    await until(() => client.closed, 5000, 'the late connection to be dropped');
    expect(accepted).toEqual([]);
    expect(origin.received).toEqual([]);
    held.release();
    await r.close();
  });
});

describe('a peer that resets its connection', () => {
  it('after the handoff is reported in the closed event and does not crash the vendor', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('reset'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const events: RedirectorEvent[] = [];
    r.events$.subscribe((event) => events.push(event));
    const accepted: AcceptedConnection[] = [];
    const subscription = r.accepted$.subscribe((connection) => accepted.push(connection)); // and nothing else
    await r.installed();
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    await until(() => accepted.length === 1, 5000, 'the flow to be accepted');

    socket.resetAndDestroy();

    await until(() => events.some((event) => event.type === 'closed'), 5000, 'a closed event');
    const closed = events.find((event) => event.type === 'closed');
    expect(closed).toMatchObject({ connectionId: accepted[0]!.id, bytesFromClient: 0, error: { code: 'ECONNRESET' } });
    expect(closed).not.toHaveProperty('onwardError');
    subscription.unsubscribe();
  });

  it('on the origin side after connectOnward() is reported as onwardError in the closed event', async () => {
    using registry = tempRegistry();
    const origin = net.createServer((socket) => {
      socket.on('error', () => socket.destroy());
      socket.once('data', () => socket.resetAndDestroy());
    });
    await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
    const originPort = (origin.address() as net.AddressInfo).port;
    await using r = createRedirector({ id: uniqueId('oreset'), priority: 1, match: { ports: [originPort] }, registry: registry.path });
    const events: RedirectorEvent[] = [];
    r.events$.subscribe((event) => events.push(event));
    const subscription = r.accepted$.subscribe((connection) => {
      connection.connectOnward().then(
        (upstream) => void relay(connection.socket, upstream),
        () => connection.socket.destroy(),
      );
    });
    await r.installed();
    const socket = await connect({ host: '127.0.0.1', port: originPort, registry: registry.path });
    const client = watchClose(socket);

    socket.write('hello');

    await until(() => events.some((event) => event.type === 'closed'), 5000, 'a closed event');
    const closed = events.find((event) => event.type === 'closed');
    expect(closed).toMatchObject({ onwardError: { code: 'ECONNRESET' } });
    expect(closed).not.toHaveProperty('error'); // the client's leg was torn down cleanly
    await until(() => client.closed, 5000, 'the client connection to close');
    subscription.unsubscribe();
    await new Promise((resolve) => origin.close(resolve));
  });
});

describe('a failed install', () => {
  it('errors accepted$ and rejects installed() with EADDRINUSE when the listen port is taken', async () => {
    using registry = tempRegistry();
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as net.AddressInfo).port;
    await using r = createRedirector({ id: uniqueId('taken'), priority: 1, registry: registry.path, listen: { port } });

    let streamError: unknown;
    r.accepted$.subscribe({ error: (error: unknown) => (streamError = error) });
    const installError = await r.installed().then(() => 'installed', (error: unknown) => error);

    expect(installError).toMatchObject({ code: 'EADDRINUSE', port });
    expect(streamError).toBe(installError);
    expect(fs.readdirSync(registry.path)).toEqual([]);
    await new Promise((resolve) => holder.close(resolve));
  });
});
