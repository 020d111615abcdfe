/**
 * The client process of a testbed run: opens every flow with `concurrency` at a time and
 * reports what it sent and got back. On the embedded backend it dials through core's
 * `connect()` / `createAgent()` / `connectDatagram()`, as an app that cooperates does; on
 * nftables it dials plainly (the kernel redirects it, UDP included) and runs unmodified
 * curl for part of the HTTP flows.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { type BackendName, connect, connectDatagram, createAgent } from '@coproxy/core';
import { type FlowSpec, payload, sha256 } from './flows.js';
import type { ClientFlowReport, ClientMessage } from './protocol.js';

interface Args {
  readonly host: string;
  readonly flows: readonly FlowSpec[];
  readonly seed: number;
  readonly backend: BackendName;
  readonly registry: string;
  readonly originCa: string;
  readonly concurrency: number;
  readonly flowTimeoutMs: number;
}

// A file, not argv: one argument string is limited to 128 KiB on Linux (MAX_ARG_STRLEN).
const args = JSON.parse(fs.readFileSync(process.argv[2] ?? '', 'utf8')) as Args;
const ca = fs.readFileSync(args.originCa);
const send = (message: ClientMessage): void => void process.send?.(message);

function dial(port: number): Promise<net.Socket> {
  if (args.backend === 'embedded') return connect({ host: args.host, port, registry: args.registry, timeoutMs: args.flowTimeoutMs });
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: args.host, port, allowHalfOpen: true });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** A slow reader stops reading for this long after each chunk of this many bytes. */
const SLOW_READ = { everyBytes: 64 * 1024, pauseMs: 15 };

/** Writes `data`, half-closes, and collects everything until the peer closes; `slow`: reads with pauses. */
function exchange(socket: net.Socket | tls.TLSSocket, data: Buffer, slow = false): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let sinceLastPause = 0;
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      sinceLastPause += chunk.length;
      if (slow && sinceLastPause >= SLOW_READ.everyBytes) {
        sinceLastPause = 0;
        socket.pause();
        setTimeout(() => socket.resume(), SLOW_READ.pauseMs);
      }
    });
    socket.once('error', reject);
    socket.once('close', () => resolve(Buffer.concat(chunks)));
    socket.end(data);
  });
}

async function tcpFlow(flow: FlowSpec): Promise<{ sent: Buffer[]; received: Buffer }> {
  const data = payload(flow, args.seed, 0);
  const echoed = await exchange(await dial(flow.port), data, flow.slowReader === true);
  return { sent: [data], received: echoed };
}

/** One UDP "connection": datagrams to the flow's port and those that come back from it. */
interface DatagramChannel {
  send(datagram: Buffer): void;
  /** The next datagram from the destination, in arrival order. */
  next(): Promise<Buffer>;
  close(): void;
}

/**
 * Embedded: core's `connectDatagram()` (each datagram framed with the records by the
 * redirect layer). nftables: a plain connected `node:dgram` socket, redirected by the kernel.
 */
async function dialDatagram(port: number): Promise<DatagramChannel> {
  const queue: Buffer[] = [];
  const waiting: { resolve: (datagram: Buffer) => void; reject: (error: Error) => void }[] = [];
  let failure: Error | undefined;
  const arrive = (datagram: Buffer): void => {
    const waiter = waiting.shift();
    if (waiter === undefined) queue.push(datagram);
    else waiter.resolve(datagram);
  };
  const fail = (error: Error): void => {
    failure ??= error;
    for (const waiter of waiting.splice(0)) waiter.reject(error);
  };
  const next = (): Promise<Buffer> => {
    const datagram = queue.shift();
    if (datagram !== undefined) return Promise.resolve(datagram);
    if (failure !== undefined) return Promise.reject(failure);
    return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  };
  if (args.backend === 'embedded') {
    const socket = await connectDatagram({ host: args.host, port, registry: args.registry });
    socket.datagrams$.subscribe({ next: arrive, error: (error: unknown) => fail(error as Error), complete: () => fail(new Error('the datagram socket closed')) });
    return { send: (datagram) => socket.send(datagram), next, close: () => socket.close() };
  }
  const socket = dgram.createSocket(args.host.includes(':') ? 'udp6' : 'udp4');
  socket.on('message', arrive);
  // ECONNREFUSED: ICMP port unreachable for this flow (a vendor rejected it, or nothing listens).
  socket.on('error', fail);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.connect(port, args.host, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  return { send: (datagram) => socket.send(datagram), next, close: () => socket.close() };
}

/**
 * A UDP flow: each datagram is sent once and its echo awaited before the next goes, so the
 * answer's order is the sending order and nothing is lost to a full buffer. No resend: a
 * lost datagram fails the flow at its timeout (a resent one would reach the origin twice).
 */
async function udpFlow(flow: FlowSpec): Promise<{ sent: Buffer[]; received: Buffer }> {
  const datagrams = Array.from({ length: flow.requests }, (_, n) => payload(flow, args.seed, n));
  const channel = await dialDatagram(flow.port);
  try {
    const received: Buffer[] = [];
    for (const datagram of datagrams) {
      channel.send(datagram);
      received.push(await channel.next());
    }
    return { sent: datagrams, received: Buffer.concat(received) };
  } finally {
    channel.close();
  }
}

async function httpsFlow(flow: FlowSpec): Promise<{ sent: Buffer[]; received: Buffer }> {
  const body = payload(flow, args.seed, 0);
  const raw = await dial(flow.port);
  const secure = tls.connect({ socket: raw, servername: flow.serverName, ca, ALPNProtocols: ['http/1.1'] });
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  const head = `POST /flow/${flow.index} HTTP/1.1\r\nHost: ${flow.serverName}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`;
  const response = await exchange(secure, Buffer.concat([Buffer.from(head), body]));
  const split = response.indexOf('\r\n\r\n');
  if (!response.subarray(0, 12).toString().startsWith('HTTP/1.1 200')) throw new Error(`HTTPS answer: ${response.subarray(0, 40).toString()}`);
  return { sent: [body], received: response.subarray(split + 4) };
}

async function httpFlow(flow: FlowSpec): Promise<{ sent: Buffer[]; received: Buffer }> {
  const bodies = Array.from({ length: flow.requests }, (_, n) => payload(flow, args.seed, n));
  const url = `http://${args.host.includes(':') ? `[${args.host}]` : args.host}:${flow.port}/flow/${flow.index}`;
  if (flow.viaCurl) return { sent: bodies, received: await curl(url, bodies) };
  const agent = args.backend === 'embedded' ? createAgent({ registry: args.registry, keepAlive: true, maxSockets: 1 }) : new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const received: Buffer[] = [];
    for (const body of bodies) {
      received.push(
        await new Promise<Buffer>((resolve, reject) => {
          const req = http.request(url, { method: 'POST', agent, headers: { 'content-length': body.length } }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (chunk: Buffer) => chunks.push(chunk));
            res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks)) : reject(new Error(`HTTP ${res.statusCode}`))));
            res.on('error', reject);
          });
          req.on('error', reject);
          req.end(body);
        }),
      );
    }
    return { sent: bodies, received: Buffer.concat(received) };
  } finally {
    agent.destroy();
  }
}

/** Unmodified curl, one connection for every request (`--next` reuses it). */
async function curl(url: string, bodies: readonly Buffer[]): Promise<Buffer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-curl-'));
  try {
    const argv = ['-sS', '--fail', '--max-time', String(Math.ceil(args.flowTimeoutMs / 1000))];
    bodies.forEach((body, n) => {
      const file = path.join(dir, `body-${n}`);
      fs.writeFileSync(file, body);
      if (n > 0) argv.push('--next', '-sS', '--fail');
      argv.push('--data-binary', `@${file}`, '-H', 'content-type: application/octet-stream', url);
    });
    return await new Promise<Buffer>((resolve, reject) => {
      execFile('curl', argv, { encoding: 'buffer', maxBuffer: 1 << 20 }, (error, stdout, stderr) =>
        error === null ? resolve(stdout) : reject(new Error(`curl: ${stderr.toString().trim() || error.message}`)),
      );
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms))),
  ]);
}

async function run(flow: FlowSpec): Promise<ClientFlowReport> {
  const base = { index: flow.index, kind: flow.kind, port: flow.port, viaCurl: flow.viaCurl };
  const expected = Array.from({ length: flow.requests }, (_, n) => payload(flow, args.seed, n));
  const sent = createHash('sha256');
  for (const body of expected) sent.update(body);
  const sentBytes = expected.reduce((sum, body) => sum + body.length, 0);
  const flowRun = flow.kind === 'tcp' ? tcpFlow(flow) : flow.kind === 'https' ? httpsFlow(flow) : flow.kind === 'udp' ? udpFlow(flow) : httpFlow(flow);
  try {
    const { received } = await withTimeout(flowRun, args.flowTimeoutMs, `flow ${flow.index}`);
    return { ...base, ok: true, sent: sent.digest('hex'), sentBytes, received: sha256(received), receivedBytes: received.length };
  } catch (error) {
    return { ...base, ok: false, error: (error as Error).message, sent: sent.digest('hex'), sentBytes, received: '', receivedBytes: 0 };
  }
}

async function main(): Promise<void> {
  const reports: ClientFlowReport[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < args.flows.length) {
      const flow = args.flows[next++]!;
      reports.push(await run(flow));
      send({ progress: reports.length });
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, args.flows.length) }, worker));
  // Disconnect once the report is written to the channel: a large one (thousands of flows)
  // is still being written when send() returns, and an early disconnect loses it.
  process.send?.({ done: reports.sort((a, b) => a.index - b.index) } satisfies ClientMessage, () => process.disconnect?.());
}

main().catch((error: unknown) => {
  process.stderr.write(`testbed client: ${String(error)}\n`);
  process.exit(1);
});
