import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { firstValueFrom, toArray } from 'rxjs';
import { describe, expect, it, vi } from 'vitest';
import { createAgent } from '../backends/embedded/agent.js';
import { connect } from '../backends/embedded/connect.js';
import { CoproxyError } from '../model/errors.js';
import { RedirectState } from '../model/redirect-state.js';
import { exchange, passThrough, sha256, startEchoOrigin, tempRegistry, until, type Acceptance } from '../testing/harness.js';
import { createRedirector } from './redirector.js';
import type { RedirectorEvent } from './redirector-events.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

describe('a chain of embedded redirectors', () => {
  it('lets two vendors each inspect a flow exactly once, in priority order, with bytes unchanged', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const av = createRedirector({ id: uniqueId('acme-av'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    const dlp = createRedirector({ id: uniqueId('dlp'), priority: 20, match: { ports: [origin.port] }, registry: registry.path });
    await using _av = av;
    await using _dlp = dlp;
    const log: Acceptance[] = [];
    const subscriptions = [passThrough(dlp, log), passThrough(av, log)];
    await Promise.all([av.installed(), dlp.installed()]);

    const payload = randomBytes(1 << 20);
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    const reply = await exchange(socket, 'flow-1', payload);

    expect(log.map((a) => a.redirectorId)).toEqual([av.id, dlp.id]);
    const [first, second] = log.map((a) => a.connection);
    expect(first!.state).toBe(RedirectState.NotRedirected);
    expect(second!.state).toBe(RedirectState.RedirectedByOther);
    expect(second!.records.redirectedBy).toEqual([av.id, dlp.id]);
    expect(second!.records.stateFor(dlp.id)).toBe(RedirectState.RedirectedBySelf);
    expect(second!.records.stateFor(av.id)).toBe(RedirectState.PreviouslyRedirectedBySelf);
    expect(first!.originalDestination).toEqual({ address: '127.0.0.1', port: origin.port, family: 4 });
    expect(second!.originalDestination).toEqual({ address: '127.0.0.1', port: origin.port, family: 4 });
    expect(first!.source.pid).toBe(process.pid);
    const expected = Buffer.concat([Buffer.from('FLOW flow-1\n'), payload]);
    await until(() => origin.received.length === 1, 5000, 'the origin to see the flow end');
    expect(sha256(origin.received[0]!)).toBe(sha256(expected));
    expect(sha256(reply)).toBe(sha256(expected));
    subscriptions.forEach((s) => s.unsubscribe());
  });

  it('chains three vendors registered in any order and ends at the origin', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const priorities = [30, -5, 12];
    const redirectors = priorities.map((priority, i) =>
      createRedirector({ id: uniqueId(`v${i}`), priority, match: { ports: [origin.port] }, registry: registry.path }),
    );
    const log: Acceptance[] = [];
    const subscriptions = redirectors.map((r) => passThrough(r, log));
    await Promise.all(redirectors.map((r) => r.installed()));

    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 't', Buffer.from('hello'));

    expect(reply.toString()).toBe('FLOW t\nhello');
    expect(log.map((a) => a.redirectorId)).toEqual([redirectors[1]!.id, redirectors[2]!.id, redirectors[0]!.id]);
    expect(log[2]!.connection.records.hops).toBe(3);
    subscriptions.forEach((s) => s.unsubscribe());
    await Promise.all(redirectors.map((r) => r.close()));
  });

  it('leaves flows its rule does not match alone', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('narrow'), priority: 1, match: { ports: [1] }, registry: registry.path });
    const log: Acceptance[] = [];
    const subscription = passThrough(r, log);
    await r.installed();
    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'x', Buffer.from('y'));
    expect(reply.toString()).toBe('FLOW x\ny');
    expect(log).toHaveLength(0);
    subscription.unsubscribe();
  });

  it('redirects IPv6 flows and reports the IPv6 original destination', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin('::1');
    await using r = createRedirector({ id: uniqueId('v6'), priority: 1, match: { family: 6, hosts: ['::1/128'] }, registry: registry.path });
    const log: Acceptance[] = [];
    const subscription = passThrough(r, log);
    await r.installed();
    const reply = await exchange(await connect({ host: '::1', port: origin.port, registry: registry.path }), 'six', Buffer.from('z'));
    expect(reply.toString()).toBe('FLOW six\nz');
    expect(log[0]!.connection.originalDestination).toEqual({ address: '::1', port: origin.port, family: 6 });
    subscription.unsubscribe();
  });
});

describe('a vendor that drops the records', () => {
  it('is caught again by the vendor before it: the same flow is accepted twice', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using a = createRedirector({ id: uniqueId('a'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    await using b = createRedirector({ id: uniqueId('b'), priority: 20, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    const subscriptions = [passThrough(a, log), passThrough(b, log, { propagateRecords: false })];
    await Promise.all([a.installed(), b.installed()]);

    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'loop', Buffer.from('p'));

    expect(reply.toString()).toBe('FLOW loop\np');
    expect(log.map((x) => `${x.redirectorId}:${x.tag}`)).toEqual([`${a.id}:loop`, `${b.id}:loop`, `${a.id}:loop`]);
    expect(log[2]!.connection.state).toBe(RedirectState.RedirectedByOther);
    expect(log[2]!.connection.records.redirectedBy).toEqual([b.id, a.id]);
    subscriptions.forEach((s) => s.unsubscribe());
  });

  it('loops forever when both vendors only exclude themselves, until a hop bound stops it', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using a = createRedirector({ id: uniqueId('na'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    await using b = createRedirector({ id: uniqueId('nb'), priority: 20, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    const bound = 12;
    const stopAtBound = (): boolean => log.length < bound;
    const subscriptions = [
      passThrough(a, log, { propagateRecords: false, onAccept: stopAtBound }),
      passThrough(b, log, { propagateRecords: false, onAccept: stopAtBound }),
    ];
    await Promise.all([a.installed(), b.installed()]);

    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    const reply = await exchange(socket, 'forever', Buffer.from('q')).catch((error: unknown) => error);

    expect(log).toHaveLength(bound);
    expect(log.every((x) => x.tag === 'forever')).toBe(true);
    expect(log.map((x) => x.redirectorId).slice(0, 4)).toEqual([a.id, b.id, a.id, b.id]);
    expect(origin.received).toHaveLength(0);
    expect(Buffer.isBuffer(reply) ? reply.length : 0).toBe(0);
    subscriptions.forEach((s) => s.unsubscribe());
  });
});

describe('redirector lifecycle', () => {
  it('installs on subscribe and, on the last unsubscribe, removes the entry and closes the listener', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('life'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const entry = path.join(registry.path, `${r.id}.json`);
    expect(fs.existsSync(entry)).toBe(false);

    const log: Acceptance[] = [];
    const first = passThrough(r, log);
    const second = r.accepted$.subscribe();
    const listening = await r.installed();
    expect(JSON.parse(fs.readFileSync(entry, 'utf8'))).toMatchObject({ id: r.id, pid: process.pid, listen: { port: listening.port } });

    first.unsubscribe();
    expect(fs.existsSync(entry)).toBe(true); // one subscriber is still there
    second.unsubscribe();
    expect(fs.existsSync(entry)).toBe(false);
    expect(r.listening).toBeUndefined();
    await expect(
      new Promise((resolve, reject) => net.connect(listening.port, '127.0.0.1').once('connect', resolve).once('error', reject)),
    ).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'd', Buffer.from('direct'));
    expect(reply.toString()).toBe('FLOW d\ndirect');
    expect(log).toHaveLength(0);
  });

  it('lets established flows finish after the redirector closes', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const r = createRedirector({ id: uniqueId('drain'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    passThrough(r, log);
    await r.installed();
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    socket.write('FLOW open\n');
    await until(() => log.length === 1, 5000, 'the flow to be accepted');
    await r.close();
    const reply: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => reply.push(chunk));
    socket.end('still here');
    await new Promise((resolve) => socket.once('end', resolve));
    expect(Buffer.concat(reply).toString()).toBe('FLOW open\nstill here');
  });

  it('reports accepted, onward-connected and closed events with payload byte counts', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const r = createRedirector({ id: uniqueId('events'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const events: RedirectorEvent[] = [];
    const all = firstValueFrom(r.events$.pipe(toArray()));
    r.events$.subscribe((event) => events.push(event));
    const subscription = passThrough(r, []);
    await r.installed();
    await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'e', Buffer.alloc(1000, 1));
    await until(() => events.some((e) => e.type === 'closed'), 5000, 'a closed event');
    subscription.unsubscribe();
    await r.close();

    const types = (await all).map((e) => e.type);
    expect(types).toEqual(['installed', 'accepted', 'onward-connected', 'closed', 'uninstalled']);
    const closed = events.find((e) => e.type === 'closed');
    expect(closed).toMatchObject({ bytesFromClient: 1000 + 'FLOW e\n'.length, bytesToClient: 1000 + 'FLOW e\n'.length });
  });

  it('completes accepted$ on close and refuses to be subscribed again', async () => {
    using registry = tempRegistry();
    const r = createRedirector({ id: uniqueId('closed'), priority: 1, registry: registry.path });
    const completed = firstValueFrom(r.accepted$.pipe(toArray()));
    await r.installed();
    await r.close();
    await expect(completed).resolves.toEqual([]);
    expect(fs.readdirSync(registry.path)).toEqual([]);
    await expect(firstValueFrom(r.accepted$)).rejects.toMatchObject({ code: 'COPROXY_REDIRECTOR_CLOSED' });
  });

  it('refuses a second live redirector with the same id', async () => {
    using registry = tempRegistry();
    await using r = createRedirector({ id: uniqueId('dup'), priority: 1, registry: registry.path });
    expect(() => createRedirector({ id: r.id, priority: 2, registry: registry.path })).toThrow(
      expect.objectContaining({ code: 'COPROXY_REDIRECTOR_ID_IN_USE' }),
    );
    await r.close();
    await using again = createRedirector({ id: r.id, priority: 2, registry: registry.path });
    expect(again.id).toBe(r.id);
  });

  it.each([
    [{ id: 'Bad_Id', priority: 1 }, 'id'],
    [{ id: 'x'.repeat(33), priority: 1 }, 'id'],
    [{ id: 'ok', priority: 1.5 }, 'priority'],
    [{ id: 'ok', priority: 1, match: { ports: [70000] } }, 'match.ports[0]'],
    [{ id: 'ok', priority: 1, match: { hosts: ['example.com'] } }, 'match.hosts[0]'],
    [{ id: 'ok', priority: 1, match: { hosts: [] } }, 'match.hosts'],
    [{ id: 'ok', priority: 1, failMode: 'maybe' }, 'failMode'],
    [{ id: 'ok', priority: 1, context: Buffer.alloc(1025) }, 'context'],
  ])('rejects invalid options %j with a typed error naming %s', (options, option) => {
    expect(() => createRedirector(options as never)).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option }));
  });

  // On Windows the backend is available; its own tests (backends/wfp/) run it on Linux
  // against a Winsock stand-in.
  it.skipIf(process.platform === 'win32')('says plainly that the WFP backend needs Windows', () => {
    expect(() => createRedirector({ id: 'k', priority: 1, backend: 'wfp' })).toThrow(
      expect.objectContaining({
        code: 'COPROXY_BACKEND_UNAVAILABLE',
        backend: 'wfp',
        reason: expect.stringContaining(`needs Windows`) as unknown,
        message: expect.stringContaining(`this is ${process.platform}`) as unknown,
      }),
    );
  });

  it('refuses options the nftables backend cannot honour, before touching the kernel', async () => {
    const invalid = (option: string): unknown => expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option });
    // nat chains must run after conntrack (-200): the kernel refuses lower priorities.
    expect(() => createRedirector({ id: 'k', priority: -200, backend: 'nftables' })).toThrow(invalid('priority'));
    expect(() => createRedirector({ id: 'k', priority: 0, backend: 'nftables', listen: { host: '0.0.0.0' } })).toThrow(invalid('listen.host'));
    expect(() => createRedirector({ id: 'k', priority: 0, backend: 'nftables', markMask: 0 })).toThrow(invalid('markMask'));
    expect(() => createRedirector({ id: 'k', priority: 0, markMask: 2 ** 32 })).toThrow(invalid('markMask'));
    vi.stubEnv('COPROXY_MARK_MASK', 'lots');
    try {
      expect(() => createRedirector({ id: 'k', priority: 0, backend: 'nftables' })).toThrow(invalid('COPROXY_MARK_MASK'));
      // The variable concerns the nftables backend only.
      await createRedirector({ id: uniqueId('env'), priority: 0 }).close();
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe('redirect context', () => {
  it('gives a redirector the context it attached, and says when there is none', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using tagged = createRedirector({
      id: uniqueId('ctx'), priority: 1, match: { ports: [origin.port] }, registry: registry.path, context: Buffer.from('policy-7'),
    });
    await using plain = createRedirector({ id: uniqueId('noctx'), priority: 2, match: { ports: [origin.port] }, registry: registry.path });
    const log: Acceptance[] = [];
    const subscriptions = [passThrough(tagged, log), passThrough(plain, log)];
    await Promise.all([tagged.installed(), plain.installed()]);
    await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'c', Buffer.from('.'));

    expect(log[0]!.connection.context().toString()).toBe('policy-7');
    let caught: unknown;
    try {
      log[1]!.connection.context();
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(CoproxyError);
    expect(caught).toMatchObject({ code: 'COPROXY_CONTEXT_NOT_FOUND', redirectorId: plain.id });
    subscriptions.forEach((s) => s.unsubscribe());
  });
});

describe('createAgent', () => {
  it('sends an ordinary http.get through the redirect chain', async () => {
    using registry = tempRegistry();
    const server = http.createServer((req, res) => res.end(`hello ${req.url}`));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    await using r = createRedirector({ id: uniqueId('web'), priority: 1, match: { ports: [port] }, registry: registry.path });
    const seen: string[] = [];
    const subscription = r.accepted$.subscribe((conn) => {
      seen.push(`${conn.originalDestination.address}:${conn.originalDestination.port}`);
      void conn.connectOnward().then((up) => conn.socket.pipe(up).pipe(conn.socket));
    });
    await r.installed();
    const agent = createAgent({ registry: registry.path });
    const body = await new Promise<string>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: '/x', agent }, (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (c: string) => (text += c)).on('end', () => resolve(text));
      }).on('error', reject);
    });
    expect(body).toBe('hello /x');
    expect(seen).toEqual([`127.0.0.1:${port}`]);
    agent.destroy();
    subscription.unsubscribe();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
});
