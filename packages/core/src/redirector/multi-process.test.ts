import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../backends/embedded/connect.js';
import { exchange, startEchoOrigin, tempRegistry, until } from '../testing/harness.js';
import { createRedirector } from './redirector.js';

// The child runs the built package (dist/): `pnpm test` builds first (turbo `test` dependsOn `build`).
const fixture = fileURLToPath(new URL('../../test-fixtures/vendor-process.mjs', import.meta.url));

interface VendorProcess {
  readonly child: ChildProcess;
  /** The port its listener is on. */
  readonly port: number;
  readonly accepted: { tag: string; state: string; redirectedBy: string[]; pid: number }[];
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

async function startVendor(args: string[]): Promise<VendorProcess> {
  const child = fork(fixture, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(child);
  const accepted: VendorProcess['accepted'] = [];
  const port = await new Promise<number>((resolve, reject) => {
    child.on('message', (message: { ready?: number; accepted?: VendorProcess['accepted'][number] }) => {
      if (message.ready !== undefined) resolve(message.ready);
      if (message.accepted !== undefined) accepted.push(message.accepted);
    });
    child.once('exit', (code) => reject(new Error(`vendor exited early with ${code}`)));
  });
  return { child, port, accepted };
}

const exited = (child: ChildProcess): Promise<number | null> => new Promise((resolve) => child.once('exit', resolve));

// Vendor processes started and restarted: on a 2-core machine at load 18-22 a child took
// over 10 s to start, so the hang guard is wider than the package's 30 s.
describe('redirectors in separate processes', { timeout: 120_000 }, () => {
  it('cooperate through the registry: each vendor inspects the flow once, in priority order', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const port = String(origin.port);
    const [late, early] = await Promise.all([
      startVendor(['mp-late', '50', registry.path, port]),
      startVendor(['mp-early', '-50', registry.path, port]),
    ]);

    const replies = await Promise.all(
      ['one', 'two', 'three'].map(async (tag) =>
        (await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), tag, Buffer.from(tag))).toString(),
      ),
    );

    expect(replies).toEqual(['FLOW one\none', 'FLOW two\ntwo', 'FLOW three\nthree']);
    // Each vendor reports over IPC, which may trail the bytes it relayed.
    await until(() => early.accepted.length === 3 && late.accepted.length === 3, 5000, 'both vendors to report three flows');
    expect(early.accepted.map((a) => a.tag).sort()).toEqual(['one', 'three', 'two']);
    expect(late.accepted.map((a) => a.tag).sort()).toEqual(['one', 'three', 'two']);
    expect(early.accepted.every((a) => a.state === 'NotRedirected' && a.pid === process.pid)).toBe(true);
    expect(late.accepted.every((a) => a.state === 'RedirectedByOther' && a.pid === early.child.pid)).toBe(true);
    expect(late.accepted[0]!.redirectedBy).toEqual(['mp-early', 'mp-late']);
  });

  it('fails open when a vendor is killed: its stale entry is skipped and traffic flows', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const vendor = await startVendor(['mp-open', '1', registry.path, String(origin.port), 'open']);
    vendor.child.kill('SIGKILL');
    await exited(vendor.child);
    expect(fs.existsSync(path.join(registry.path, 'mp-open.json'))).toBe(true); // SIGKILL leaves it

    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'x', Buffer.from('through'));
    expect(reply.toString()).toBe('FLOW x\nthrough');
    expect(origin.received.map(String)).toEqual(['FLOW x\nthrough']);
  });

  it('fails closed when a fail-closed vendor is killed: matching connections are refused with a typed error', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const vendor = await startVendor(['mp-closed', '1', registry.path, String(origin.port), 'closed']);
    vendor.child.kill('SIGKILL');
    await exited(vendor.child);

    await expect(connect({ host: '127.0.0.1', port: origin.port, registry: registry.path })).rejects.toMatchObject({
      code: 'COPROXY_REDIRECTOR_UNAVAILABLE',
      redirectorId: 'mp-closed',
    });
    expect(origin.received).toHaveLength(0);
  });

  it('takes over the id of a killed vendor when it restarts, and removes its entry on a plain exit', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const first = await startVendor(['mp-restart', '1', registry.path, String(origin.port)]);
    first.child.kill('SIGKILL');
    await exited(first.child);
    const second = await startVendor(['mp-restart', '1', registry.path, String(origin.port)]);
    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, 'mp-restart.json'), 'utf8')) as { pid: number };
    expect(entry.pid).toBe(second.child.pid);

    await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'again', Buffer.from('.'));
    await until(() => second.accepted.length === 1, 5000, 'the restarted vendor to report the flow');
    expect(second.accepted.map((a) => a.tag)).toEqual(['again']);

    second.child.send('exit-without-close');
    await exited(second.child);
    await until(() => !fs.existsSync(path.join(registry.path, 'mp-restart.json')), 2000, 'the entry to go');
  });

  it('notices a vendor that starts or stops in another process: direct, redirected, direct again', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const open = (): Promise<net.Socket> => connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });

    const before = await open(); // reads the (empty) table and caches it
    expect(before.remotePort).toBe(origin.port);
    expect((await exchange(before, 'before', Buffer.from('.'))).toString()).toBe('FLOW before\n.');

    const vendor = await startVendor(['mp-cache', '1', registry.path, String(origin.port)]);
    const during = await open();
    expect(during.remotePort).toBe(vendor.port);
    expect((await exchange(during, 'during', Buffer.from('.'))).toString()).toBe('FLOW during\n.');
    await until(() => vendor.accepted.length === 1, 5000, 'the vendor to report the flow');
    expect(vendor.accepted.map((a) => a.tag)).toEqual(['during']);

    vendor.child.kill('SIGTERM');
    expect(await exited(vendor.child)).toBe(0); // it closed cleanly and removed its entry
    expect(fs.readdirSync(registry.path)).toEqual([]);
    const after = await open();
    expect(after.remotePort).toBe(origin.port);
    expect((await exchange(after, 'after', Buffer.from('.'))).toString()).toBe('FLOW after\n.');
    expect(origin.received.map(String)).toEqual(['FLOW before\n.', 'FLOW during\n.', 'FLOW after\n.']);
  });

  it('refuses an id that a live redirector in another process holds, naming that process', async () => {
    using registry = tempRegistry();
    const holder = await startVendor(['mp-held', '1', registry.path, '9']);
    await using r = createRedirector({ id: 'mp-held', priority: 2, registry: registry.path });

    let streamError: unknown;
    r.accepted$.subscribe({ error: (error: unknown) => (streamError = error) });
    const installError = await r.installed().then(() => 'installed', (error: unknown) => error);

    expect(installError).toMatchObject({ code: 'COPROXY_REDIRECTOR_ID_IN_USE', redirectorId: 'mp-held', ownerPid: holder.child.pid });
    expect(streamError).toBe(installError);
    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, 'mp-held.json'), 'utf8')) as { pid: number; listen: { port: number } };
    expect(entry).toMatchObject({ pid: holder.child.pid, listen: { port: holder.port } });
  });
});
