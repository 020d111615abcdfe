import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { RegistryEntry } from './registry.js';
import { createRedirector } from '../../redirector/redirector.js';
import { exchange, startEchoOrigin, tempRegistry, until, type EchoOrigin } from '../../testing/harness.js';
import { refusingPort } from '../../testing/ports.js';
import { connect, type ConnectOptions } from './connect.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

/** Writes a registry entry by hand, as another process would have published it. */
function writeEntry(registry: string, fields: Pick<RegistryEntry, 'id' | 'failMode' | 'match' | 'listen'>): void {
  const entry: RegistryEntry = {
    format: 1, priority: 1, pid: process.pid, nonce: randomUUID(), secret: randomBytes(32).toString('base64'),
    startedAt: new Date().toISOString(), ...fields,
  };
  fs.writeFileSync(path.join(registry, `${entry.id}.json`), JSON.stringify(entry), { mode: 0o600 });
}

/** The error an installation into `registry` fails with. */
async function installError(registry: string): Promise<unknown> {
  const r = createRedirector({ id: uniqueId('probe'), priority: 1, registry });
  let streamError: unknown;
  r.accepted$.subscribe({ error: (error: unknown) => (streamError = error) });
  const error = await r.installed().then(() => 'installed', (failure: unknown) => failure);
  await r.close();
  expect(streamError).toBe(error);
  return error;
}

describe('connect() and a redirector that cannot be reached', () => {
  it('goes straight to the destination past a fail-open redirector whose listener refuses, and warns', async () => {
    using registry = tempRegistry();
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    await using origin = await startEchoOrigin();
    await using gone = await refusingPort();
    writeEntry(registry.path, {
      id: 'gone-open', failMode: 'open', match: { ports: [origin.port] }, listen: { host: '127.0.0.1', port: gone.port },
    });

    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });

    expect(socket.remotePort).toBe(origin.port);
    expect((await exchange(socket, 'open', Buffer.from('through'))).toString()).toBe('FLOW open\nthrough');
    expect(origin.received.map(String)).toEqual(['FLOW open\nthrough']);
    expect(warn).toHaveBeenCalledWith(expect.stringContaining("'gone-open' cannot be reached (ECONNREFUSED)"), 'CoproxyFailOpenWarning');
    warn.mockRestore();
  });

  it('refuses the connection when a fail-closed redirector\'s listener refuses', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using gone = await refusingPort();
    writeEntry(registry.path, {
      id: 'gone-closed', failMode: 'closed', match: { ports: [origin.port] }, listen: { host: '127.0.0.1', port: gone.port },
    });

    await expect(connect({ host: '127.0.0.1', port: origin.port, registry: registry.path })).rejects.toMatchObject({
      code: 'COPROXY_REDIRECTOR_UNAVAILABLE',
      redirectorId: 'gone-closed',
      cause: { code: 'ECONNREFUSED' },
    });
    expect(origin.received).toEqual([]);
  });
});

describe('connect() options', () => {
  it.each<[Partial<ConnectOptions>, string]>([
    [{ port: 0 }, 'port'],
    [{ port: 70000 }, 'port'],
    [{ port: 80.5 }, 'port'],
    [{ host: '' }, 'host'],
    [{ timeoutMs: 0 }, 'timeoutMs'],
  ])('rejects %j with a typed error naming %s, without throwing synchronously', async (bad, option) => {
    using registry = tempRegistry();
    let attempt: Promise<net.Socket> | undefined;
    expect(() => (attempt = connect({ host: '127.0.0.1', port: 80, registry: registry.path, ...bad }))).not.toThrow();
    await expect(attempt).rejects.toMatchObject({ code: 'COPROXY_INVALID_OPTIONS', option });
  });
});

/** Stopped listener processes, killed even when a test fails before disposing of them. */
const stoppedChildren = new Set<ChildProcess>();
afterEach(() => {
  for (const child of stoppedChildren) child.kill('SIGKILL');
  stoppedChildren.clear();
});

/**
 * A loopback listener that completes no more handshakes: a child process listens with a
 * backlog of 1 and is stopped (SIGSTOP), so it never accepts; once two connections fill
 * its accept queue, Linux drops every further SYN and the connecting side waits. No
 * traffic leaves loopback.
 */
async function stalledListener(): Promise<{ readonly port: number } & AsyncDisposable> {
  const script = `const s = require('node:net').createServer();
s.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, () => process.stdout.write(s.address().port + '\\n'));`;
  const child: ChildProcess = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (out.includes('\n')) resolve(Number(out.trim()));
    });
    void exited.then(() => reject(new Error('the listener process exited')));
  });
  stoppedChildren.add(child);
  child.kill('SIGSTOP');
  await until(() => fs.readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]?.startsWith('T') === true, 5000, 'the listener to stop');
  const fillers = [net.connect(port, '127.0.0.1'), net.connect(port, '127.0.0.1')];
  await Promise.all(fillers.map((socket) => new Promise((resolve) => socket.once('connect', resolve))));
  return {
    port,
    async [Symbol.asyncDispose]() {
      for (const socket of fillers) socket.destroy();
      stoppedChildren.delete(child);
      child.kill('SIGKILL');
      await exited;
    },
  };
}

describe.skipIf(process.platform !== 'linux')('timeoutMs', () => {
  it('gives up a handshake that gets no answer with COPROXY_CONNECT_TIMEOUT', async () => {
    using registry = tempRegistry();
    await using stalled = await stalledListener();

    await expect(connect({ host: '127.0.0.1', port: stalled.port, registry: registry.path, timeoutMs: 200 })).rejects.toMatchObject({
      code: 'COPROXY_CONNECT_TIMEOUT',
      target: `127.0.0.1:${stalled.port}`,
      timeoutMs: 200,
    });
  });

  it('bounds the handshake with a redirector too: a fail-closed one that does not answer refuses the connection', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using stalled = await stalledListener();
    writeEntry(registry.path, {
      id: 'stalled-closed', failMode: 'closed', match: { ports: [origin.port] }, listen: { host: '127.0.0.1', port: stalled.port },
    });

    await expect(connect({ host: '127.0.0.1', port: origin.port, registry: registry.path, timeoutMs: 200 })).rejects.toMatchObject({
      code: 'COPROXY_REDIRECTOR_UNAVAILABLE',
      redirectorId: 'stalled-closed',
      cause: { code: 'COPROXY_CONNECT_TIMEOUT' },
    });
    expect(origin.received).toEqual([]);
  });

  it('reports an onward connection that gets no answer as onward-failed with COPROXY_CONNECT_TIMEOUT', async () => {
    using registry = tempRegistry();
    await using stalled = await stalledListener();
    await using r = createRedirector({ id: uniqueId('onward'), priority: 1, match: { ports: [stalled.port] }, registry: registry.path });
    const failures: unknown[] = [];
    const onwardFailed: unknown[] = [];
    r.events$.subscribe((event) => event.type === 'onward-failed' && onwardFailed.push(event.error));
    const subscription = r.accepted$.subscribe((connection) => {
      connection.connectOnward({ timeoutMs: 200 }).then(
        (upstream) => upstream.destroy(),
        (error: unknown) => {
          failures.push(error);
          connection.socket.destroy();
        },
      );
    });
    await r.installed();

    const socket = await connect({ host: '127.0.0.1', port: stalled.port, registry: registry.path });
    const closed = new Promise((resolve) => socket.on('error', () => undefined).once('close', resolve).resume());

    await until(() => failures.length === 1, 5000, 'the onward connection to fail');
    expect(failures[0]).toMatchObject({ code: 'COPROXY_CONNECT_TIMEOUT', timeoutMs: 200 });
    expect(onwardFailed).toEqual(failures);
    await closed;
    subscription.unsubscribe();
  });
});

/**
 * What an app sees of an unsafe registry: its connection goes straight to the origin
 * (the table cannot be trusted, and refusing every connection would let any local user
 * cut a victim off by squatting the path), with a warning naming why.
 */
async function expectIgnored(registry: string, origin: EchoOrigin, why: string): Promise<void> {
  const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
  try {
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry });
    expect(socket.remotePort).toBe(origin.port);
    socket.destroy();
    expect(warn).toHaveBeenCalledWith(expect.stringContaining(why), 'CoproxyRegistryWarning');
  } finally {
    warn.mockRestore();
  }
}

describe.skipIf(process.platform === 'win32')('a registry that is not private', () => {
  it('stops steering connections once others may write it, even after it was read', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('trusted'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const subscription = r.accepted$.subscribe((conn) => conn.socket.destroy());
    const listening = await r.installed();
    const first = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    expect(first.remotePort).toBe(listening.port); // redirected while the registry is private
    first.destroy();

    fs.chmodSync(registry.path, 0o777);

    await expectIgnored(registry.path, origin, 'writable by others');
    expect(await installError(registry.path)).toMatchObject({ code: 'COPROXY_REGISTRY_ERROR', path: registry.path });
    subscription.unsubscribe();
  });

  // Only root can hand a directory to another user; CI runs as root.
  it.skipIf(process.getuid?.() !== 0)('is ignored when another user owns it', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    fs.chownSync(registry.path, 65534, 65534);

    await expectIgnored(registry.path, origin, 'belongs to uid 65534');
    expect(await installError(registry.path)).toMatchObject({ code: 'COPROXY_REGISTRY_ERROR', path: registry.path });
  });

  it('keeps its directory 0700 and each entry 0600, tightening a directory others could read', async () => {
    using holder = tempRegistry();
    const registry = path.join(holder.path, 'registry');
    fs.mkdirSync(registry, { mode: 0o755 }); // as an older version, or a hand, might have left it
    fs.chmodSync(registry, 0o755);
    await using r = createRedirector({ id: uniqueId('modes'), priority: 1, registry });
    const subscription = r.accepted$.subscribe((conn) => conn.socket.destroy());
    await r.installed();
    expect(fs.statSync(registry).mode & 0o777).toBe(0o700);
    expect(fs.statSync(path.join(registry, `${r.id}.json`)).mode & 0o777).toBe(0o600);
    subscription.unsubscribe();
  });

  it('ignores an entry that others could write or read, and still honours the private ones', async () => {
    using registry = tempRegistry();
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    await using origin = await startEchoOrigin();
    await using open = createRedirector({ id: uniqueId('open'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    await using kept = createRedirector({ id: uniqueId('kept'), priority: 2, match: { ports: [origin.port] }, registry: registry.path });
    const subscriptions = [open, kept].map((r) => r.accepted$.subscribe((conn) => conn.socket.destroy()));
    await open.installed();
    const keptAt = await kept.installed();

    for (const [round, mode] of [0o666, 0o640].entries()) {
      fs.chmodSync(path.join(registry.path, `${open.id}.json`), mode);
      // A new directory mtime each round, seconds apart, so the table reloads: `now + mode`
      // could repeat the last round's time when the rounds ran 22 ms apart.
      fs.utimesSync(registry.path, new Date(), new Date(Date.now() + 10_000 * (round + 1)));
      const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
      expect(socket.remotePort).toBe(keptAt.port); // past the refused entry, to the next one
      socket.destroy();
      expect(warn).toHaveBeenCalledWith(expect.stringContaining(`open to others (mode ${mode.toString(8)}, must be 600)`), 'CoproxyRegistryWarning');
    }
    warn.mockRestore();
    for (const subscription of subscriptions) subscription.unsubscribe();
  });

  it.skipIf(process.getuid?.() !== 0)('ignores an entry that belongs to another user', async () => {
    using registry = tempRegistry();
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('planted'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const subscription = r.accepted$.subscribe((conn) => conn.socket.destroy());
    await r.installed();
    fs.chownSync(path.join(registry.path, `${r.id}.json`), 65534, 65534);
    fs.utimesSync(registry.path, new Date(), new Date(Date.now() + 1000));

    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    expect(socket.remotePort).toBe(origin.port);
    socket.destroy();
    expect(warn).toHaveBeenCalledWith(expect.stringContaining('registry entry belongs to uid 65534'), 'CoproxyRegistryWarning');
    warn.mockRestore();
    subscription.unsubscribe();
  });

  it('is ignored when reached through a symbolic link, even to a private directory', async () => {
    using target = tempRegistry();
    using holder = tempRegistry();
    await using origin = await startEchoOrigin();
    const link = path.join(holder.path, 'registry');
    fs.symlinkSync(target.path, link);

    await expectIgnored(link, origin, 'not a directory');
    expect(await installError(link)).toMatchObject({ code: 'COPROXY_REGISTRY_ERROR', path: link });
    expect(fs.readdirSync(target.path)).toEqual([]);
  });

  it('is ignored when others could swap it out of its parent directory', async () => {
    using holder = tempRegistry();
    await using origin = await startEchoOrigin();
    const registry = path.join(holder.path, 'registry');
    fs.mkdirSync(registry, { mode: 0o700 });
    fs.chmodSync(holder.path, 0o777); // writable by all, and no sticky bit

    await expectIgnored(registry, origin, 'without the sticky bit');
    expect(await installError(registry)).toMatchObject({ code: 'COPROXY_REGISTRY_ERROR', path: holder.path });
    expect(fs.readdirSync(registry)).toEqual([]);
  });
});
