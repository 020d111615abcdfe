import { spawn } from 'node:child_process';
import { createSecretKey, randomBytes, type KeyObject } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Subscription } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { connect } from './connect.js';
import { relay } from '../../net/relay.js';
import { RedirectRecords } from '../../model/redirect-records.js';
import { createRedirector, type Redirector } from '../../redirector/redirector.js';
import type { RejectedEvent } from '../../redirector/redirector-events.js';
import { entryKey, exchange, startEchoOrigin, tempRegistry, until, type EchoOrigin } from '../../testing/harness.js';
import { encodeFlowHeader } from './flow-header.js';

// I7, "a vendor relays for its own user only": the embedded listener is a loopback port
// any local process can reach. These tests play the other local user, a root process
// that did not read the registry, and the owner asking for a port outside the rule.

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;
const isRoot = process.getuid?.() === 0;

interface Guard {
  readonly r: Redirector;
  readonly port: number;
  readonly rejected: RejectedEvent[];
  readonly accepted: string[];
  readonly subscription: Subscription;
}

/** A vendor that dials every flow it is handed, as a pass-through inspector would. */
async function startGuard(registry: string, ports: number[], id = uniqueId('guard')): Promise<Guard> {
  const r = createRedirector({ id, priority: 1, match: { ports }, registry });
  const rejected: RejectedEvent[] = [];
  const accepted: string[] = [];
  r.events$.subscribe((event) => event.type === 'rejected' && rejected.push(event));
  const subscription = r.accepted$.subscribe((conn) => {
    accepted.push(conn.id);
    conn.connectOnward().then(
      (upstream) => void relay(conn.socket, upstream),
      () => conn.socket.destroy(),
    );
  });
  const { port } = await r.installed();
  return { r, port, rejected, accepted, subscription };
}

/** A header naming `destinationPort` on loopback, records ending with the guard, signed with `key` if given. */
const header = (guard: Guard, destinationPort: number, key?: KeyObject): Buffer =>
  encodeFlowHeader(
    {
      source: { address: '127.0.0.1', port: 40000 },
      destination: { address: '127.0.0.1', port: destinationPort, family: 4 },
      records: RedirectRecords.empty.withRedirect(guard.r.id),
    },
    key,
  );

/** Sends a header and a payload, as a hand-built client would; resolves with what came back once the listener hangs up. */
async function sendHeader(port: number, bytes: Buffer): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => socket.destroy()); // a reset is one way of hanging up
  // Ended at once, so a vendor that does relay it (the bug) ends too, and the reply shows.
  socket.end(Buffer.concat([bytes, Buffer.from('FLOW attacker\nhello')]));
  await new Promise((resolve) => socket.once('close', resolve));
  return Buffer.concat(chunks).toString();
}

/** The vendor still serves its owner: a flow through connect() reaches the origin. */
async function expectStillServing(guard: Guard, origin: EchoOrigin, registry: string): Promise<void> {
  const socket = await connect({ host: '127.0.0.1', port: origin.port, registry });
  expect(socket.remotePort).toBe(guard.port);
  expect((await exchange(socket, 'owner', Buffer.from('still serving'))).toString()).toBe('FLOW owner\nstill serving');
  expect(guard.accepted).toHaveLength(1);
}

/**
 * Another local user's attempt, in its own process as uid/gid 65534: it cannot read the
 * registry entry (it tries, and reports why), so it sends a header it built by hand, with
 * no authentication TLV or with a made-up one. Node builtins only: the child must not
 * need this checkout, which may sit in a directory only root can traverse.
 */
const ATTACKER = `
import fs from 'node:fs';
import net from 'node:net';
const [port, entry, ...headers] = process.argv.slice(1);
let read = 'ok';
try { fs.readFileSync(entry); } catch (error) { read = error.code; }
const replies = [];
for (const hex of headers) {
  replies.push(await new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    const chunks = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', () => socket.destroy());
    socket.once('close', () => resolve(Buffer.concat(chunks).toString()));
    socket.end(Buffer.concat([Buffer.from(hex, 'hex'), Buffer.from('FLOW attacker\\nhello')]));
  }));
}
process.stdout.write(JSON.stringify({ uid: process.getuid(), read, replies }));
`;

function runAsNobody(args: string[]): Promise<{ uid: number; read: string; replies: string[] }> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', ATTACKER, ...args], {
    uid: 65534,
    gid: 65534,
    cwd: os.tmpdir(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    // 'close', not 'exit': 'exit' may come before the child's output has been read.
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(JSON.parse(stdout) as { uid: number; read: string; replies: string[] });
      else reject(new Error(`the uid 65534 client exited with ${code}: ${stderr}`));
    });
  });
}

describe('the embedded listener serves processes of the registry owner only', () => {
  // Only root can start a process as another user; CI runs as root.
  it.skipIf(!isRoot)('gives another local user who sends a hand-built header no dial, and goes on serving', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const guard = await startGuard(registry.path, [origin.port]);
    await using _r = guard.r;

    const forgedTag = createSecretKey(randomBytes(32));
    const result = await runAsNobody([
      String(guard.port),
      path.join(registry.path, `${guard.r.id}.json`),
      header(guard, origin.port).toString('hex'),
      header(guard, origin.port, forgedTag).toString('hex'),
    ]);

    expect(result.uid).toBe(65534);
    expect(result.read).toBe('EACCES'); // the secret is out of its reach
    expect(result.replies).toEqual(['', '']); // nothing echoed: no origin behind the socket
    await until(() => guard.rejected.length === 2, 5000, 'both attempts to be rejected');
    expect(guard.rejected.map((e) => e.error)).toEqual([
      expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'no-credential', peerUid: 65534 }),
      expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'bad-credential', peerUid: 65534 }),
    ]);
    expect(guard.accepted).toEqual([]);
    expect(origin.connections).toBe(0);

    await expectStillServing(guard, origin, registry.path);
    expect(origin.connections).toBe(1);
    guard.subscription.unsubscribe();
  });

  it.skipIf(!isRoot || process.platform !== 'linux')('refuses another local user even with a leaked secret: the kernel says whose socket it is', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const guard = await startGuard(registry.path, [origin.port]);
    await using _r = guard.r;
    const signed = header(guard, origin.port, entryKey(registry.path, guard.r.id)); // as if the entry had leaked

    const result = await runAsNobody([String(guard.port), path.join(registry.path, `${guard.r.id}.json`), signed.toString('hex')]);

    expect(result.replies).toEqual(['']);
    await until(() => guard.rejected.length === 1, 5000, 'the rejection');
    expect(guard.rejected[0]!.error).toMatchObject({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'peer-uid', peerUid: 65534 });
    expect(guard.accepted).toEqual([]);
    expect(origin.connections).toBe(0);
    await expectStillServing(guard, origin, registry.path);
    guard.subscription.unsubscribe();
  });

  it('refuses a process, root included, without the secret: no tag, a made-up tag, or the last installation\'s', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    // A key that was valid once: the same id's previous installation.
    const earlier = await startGuard(registry.path, [origin.port]);
    const staleKey = entryKey(registry.path, earlier.r.id);
    const id = earlier.r.id;
    earlier.subscription.unsubscribe();
    await earlier.r.close();

    const guard = await startGuard(registry.path, [origin.port], id);
    await using _r = guard.r;

    for (const key of [undefined, createSecretKey(randomBytes(32)), staleKey]) {
      expect(await sendHeader(guard.port, header(guard, origin.port, key))).toBe('');
    }
    await until(() => guard.rejected.length === 3, 5000, 'three rejections');
    expect(guard.rejected.map((e) => e.error)).toEqual([
      expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'no-credential', redirectorId: id }),
      expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'bad-credential', redirectorId: id }),
      expect.objectContaining({ code: 'COPROXY_PEER_NOT_AUTHORISED', reason: 'bad-credential', redirectorId: id }),
    ]);
    expect(guard.rejected.every((e) => e.remote.address === '127.0.0.1')).toBe(true);
    expect(guard.accepted).toEqual([]);
    expect(origin.connections).toBe(0);

    await expectStillServing(guard, origin, registry.path);
    guard.subscription.unsubscribe();
  });

  it('refuses a destination outside its match rule even from its owner, and dials nothing', async () => {
    using registry = tempRegistry();
    await using inside = await startEchoOrigin();
    await using outside = await startEchoOrigin();
    const guard = await startGuard(registry.path, [inside.port]);
    await using _r = guard.r;
    const key = entryKey(registry.path, guard.r.id); // what the owner's connector would use

    expect(await sendHeader(guard.port, header(guard, outside.port, key))).toBe('');

    await until(() => guard.rejected.length === 1, 5000, 'the rejection');
    expect(guard.rejected[0]!.error).toMatchObject({
      code: 'COPROXY_DESTINATION_OUTSIDE_RULE',
      redirectorId: guard.r.id,
      destination: { address: '127.0.0.1', port: outside.port, family: 4 },
    });
    expect(guard.accepted).toEqual([]);
    expect(outside.connections).toBe(0);
    await expectStillServing(guard, inside, registry.path);
    guard.subscription.unsubscribe();
  });
});
