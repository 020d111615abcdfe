/**
 * `pnpm demo`: two independent vendors on the embedded backend, first cooperating through
 * redirect records, then with one of them dropping the records, then both. Prints what
 * each vendor saw, so the difference the records make is visible in one run.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Subscription } from 'rxjs';
import { connect, createRedirector, relay, type AcceptedConnection, type Redirector } from '../index.js';

const HOP_BOUND = 8;
const FLOWS = 3;

interface Sighting {
  readonly vendor: string;
  readonly state: string;
}

const bold = (text: string): string => (process.stdout.isTTY ? `\x1b[1m${text}\x1b[0m` : text);
const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex').slice(0, 12);

async function startOrigin(): Promise<{ server: net.Server; port: number; received: Map<string, Buffer> }> {
  const received = new Map<string, Buffer>();
  const server = net.createServer((socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => {
      const data = Buffer.concat(chunks);
      const tag = data.subarray(0, data.indexOf(0x0a)).toString();
      received.set(tag, data);
      socket.end(data); // echo
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as net.AddressInfo).port, received };
}

/** A vendor: notes the flow's tag and the redirect state it saw, then forwards. */
function runVendor(
  redirector: Redirector,
  sightings: Map<string, Sighting[]>,
  propagateRecords: boolean,
): Subscription {
  return redirector.accepted$.subscribe((conn) => {
    inspect(conn).catch((error: unknown) => {
      console.error(`  ${redirector.id}: ${String(error)}`);
      conn.socket.destroy();
    });
  });

  async function inspect(conn: AcceptedConnection): Promise<void> {
    const [first] = (await once(conn.socket)) as [Buffer];
    const tag = first.subarray(0, first.indexOf(0x0a)).toString();
    const seen = sightings.get(tag) ?? [];
    sightings.set(tag, [...seen, { vendor: redirector.id, state: conn.state }]);
    if (seen.length + 1 > HOP_BOUND) {
      conn.socket.destroy(); // the hop bound: a loop is cut here
      return;
    }
    conn.socket.pause();
    const upstream = await conn.connectOnward({ propagateRecords });
    upstream.write(first);
    await relay(conn.socket, upstream);
  }
}

function once(socket: net.Socket): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    socket.once('data', (chunk) => resolve([chunk]));
    socket.once('error', reject);
  });
}

async function scenario(title: string, dropRecords: Record<string, boolean>): Promise<void> {
  console.log(`\n${bold(title)}`);
  const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-demo-'));
  const origin = await startOrigin();
  const match = { ports: [origin.port] };
  const vendors = [
    createRedirector({ id: 'acme-av', priority: 10, match, registry }),
    createRedirector({ id: 'kids-filter', priority: 20, match, registry }),
  ];
  const sightings = new Map<string, Sighting[]>();
  const subscriptions = vendors.map((v) => runVendor(v, sightings, !dropRecords[v.id]));
  await Promise.all(vendors.map((v) => v.installed()));

  for (let i = 1; i <= FLOWS; i++) {
    const tag = `flow-${i}`;
    const sent = Buffer.concat([Buffer.from(`${tag}\n`), randomBytes(64 * 1024)]);
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry });
    const reply = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('close', () => resolve(Buffer.concat(chunks)));
      socket.on('error', () => socket.destroy());
      socket.end(sent);
    });
    const hops = sightings.get(tag) ?? [];
    const path = ['client', ...hops.map((h) => `${h.vendor} [${h.state}]`)];
    const arrived = origin.received.get(tag);
    if (arrived !== undefined) path.push('origin');
    else path.push(`✂ cut at hop bound ${HOP_BOUND}`);
    console.log(`  ${tag}: ${path.join(' → ')}`);
    const perVendor = vendors.map((v) => `${v.id} ×${hops.filter((h) => h.vendor === v.id).length}`).join(', ');
    const intact = arrived !== undefined && sha(arrived) === sha(sent) && sha(reply) === sha(sent);
    console.log(`          inspections: ${perVendor}; bytes ${intact ? `intact both ways (sha256 ${sha(sent)}…)` : 'NOT delivered'}`);
  }

  subscriptions.forEach((s) => s.unsubscribe());
  await Promise.all(vendors.map((v) => v.close()));
  origin.server.close();
  fs.rmSync(registry, { recursive: true, force: true });
}

console.log(bold('coproxy demo: two independent vendors, one host, the embedded redirect layer'));
console.log('acme-av (priority 10) and kids-filter (priority 20) both redirect every connection to the origin port.');
console.log('Neither knows the other; the redirect records each connection carries keep them apart.');

await scenario('1. Both vendors carry the records onward (propagateRecords: true)', {});
console.log('  → each vendor inspected each flow exactly once, then the flow reached its origin.');

await scenario('2. kids-filter drops the records and only excludes itself (propagateRecords: false)', { 'kids-filter': true });
console.log('  → acme-av caught kids-filter\'s onward connection again: every flow was inspected twice by acme-av.');

await scenario('3. Both vendors drop the records: the classic loop', { 'acme-av': true, 'kids-filter': true });
console.log(`  → each caught the other's onward connection until the hop bound (${HOP_BOUND}) cut the flow.`);
console.log('\nWith records, every vendor inspects every flow once, and no vendor needs to know another.');
