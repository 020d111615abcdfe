/**
 * The origin process of a testbed run: one listener per flow (its port is the flow's
 * tag), HTTP, HTTPS (certificates minted per SNI from the run's test CA), TCP echo or UDP
 * echo. It hashes what each flow brought and what it answered, and reports on request
 * over IPC.
 */
import { createHash, type Hash } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { CertificateAuthority } from '@coproxy/proxy-tls';
import type { FlowSpec } from './flows.js';
import { type PortRange, nextFreePort } from './ports.js';
import type { OriginFlowReport, OriginMessage, PortReplacement } from './protocol.js';

interface Args {
  readonly host: string;
  readonly flows: readonly FlowSpec[];
  readonly caDir: string;
  /** Where replacements for ports that cannot be bound come from: outside the ephemeral range. */
  readonly ranges: readonly PortRange[];
}

/** A bound on replacements: past it, something other than a few busy ports is wrong. */
const MAX_REPLACEMENTS = 200;

interface Tally {
  connections: number;
  received: Hash;
  receivedBytes: number;
  sent: Hash;
}

// A file, not argv: one argument string is limited to 128 KiB on Linux (MAX_ARG_STRLEN),
// which a plan of a few hundred flows exceeds.
const args = JSON.parse(fs.readFileSync(process.argv[2] ?? '', 'utf8')) as Args;
const send = (message: OriginMessage): void => void process.send?.(message);
const tallies = new Map<number, Tally>();
const tally = (port: number): Tally => {
  let t = tallies.get(port);
  if (t === undefined) tallies.set(port, (t = { connections: 0, received: createHash('sha256'), receivedBytes: 0, sent: createHash('sha256') }));
  return t;
};

/** HTTP and HTTPS: each request's body is hashed; the answer is the body's SHA-256, as text. */
function answer(port: () => number) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const t = tally(port());
    const body = createHash('sha256');
    req.on('data', (chunk: Buffer) => {
      t.received.update(chunk);
      t.receivedBytes += chunk.length;
      body.update(chunk);
    });
    req.on('end', () => {
      const text = `${body.digest('hex')}\n`;
      t.sent.update(text);
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text) }).end(text);
    });
  };
}

async function main(): Promise<void> {
  const ca = await CertificateAuthority.open({ dir: args.caDir });
  const servers: (net.Server | dgram.Socket)[] = [];
  const ports: number[] = [];
  const replaced: PortReplacement[] = [];
  const taken = new Set(args.flows.map((flow) => flow.port));
  /** The port after `port` when it cannot be bound (EADDRINUSE, EACCES); throws `error` for anything else. */
  const replace = (flow: FlowSpec, port: number, error: NodeJS.ErrnoException): number => {
    if ((error.code !== 'EADDRINUSE' && error.code !== 'EACCES') || replaced.length >= MAX_REPLACEMENTS) throw error;
    const next = nextFreePort(args.ranges, taken, port);
    if (next === undefined) throw error;
    replaced.push({ index: flow.index, from: flow.port, to: next, code: error.code });
    taken.add(next);
    return next;
  };
  for (const flow of args.flows) {
    // The flow's port is known once bound (a replacement changes it): handlers read `port`.
    let port = flow.port;
    if (flow.kind === 'udp') {
      for (;;) {
        const socket = udpEcho(() => port);
        const error = await bindUdp(socket, port, args.host);
        if (error === undefined) {
          servers.push(socket);
          break;
        }
        port = replace(flow, port, error);
      }
      ports.push(port);
      continue;
    }
    let server: net.Server;
    if (flow.kind === 'http') {
      server = http.createServer({ keepAliveTimeout: 30_000 }, answer(() => port));
    } else if (flow.kind === 'https') {
      server = https.createServer(
        { SNICallback: (name, done) => void ca.contextFor(name).then((context) => done(null, context), (error: Error) => done(error)) },
        answer(() => port),
      );
    } else {
      const afterEnd = flow.echoAfterEnd === true;
      server = net.createServer({ allowHalfOpen: true }, (socket) => {
        const t = tally(port);
        // echoAfterEnd: nothing goes back before the client's FIN, so a vendor that closes
        // both ways on a half-close loses the whole answer.
        const held: Buffer[] = [];
        socket.on('data', (chunk: Buffer) => {
          t.received.update(chunk);
          t.receivedBytes += chunk.length;
          if (afterEnd) return void held.push(chunk);
          t.sent.update(chunk);
          socket.write(chunk);
        });
        socket.on('end', () => {
          for (const chunk of held.splice(0)) {
            t.sent.update(chunk);
            socket.write(chunk);
          }
          socket.end();
        });
        socket.on('error', () => socket.destroy());
      });
    }
    server.on('connection', () => tally(port).connections++);
    for (;;) {
      const error = await listen(server, port, args.host);
      if (error === undefined) break;
      port = replace(flow, port, error);
    }
    ports.push(port);
    servers.push(server);
  }
  process.on('message', (message) => {
    if (message !== 'report') return;
    const flows: OriginFlowReport[] = [...tallies].map(([port, t]) => ({
      port,
      connections: t.connections,
      received: t.received.copy().digest('hex'),
      receivedBytes: t.receivedBytes,
      sent: t.sent.copy().digest('hex'),
    }));
    send({ flows });
  });
  process.on('disconnect', () => process.exit(0));
  send({ ready: true, ports, replaced });
}

/**
 * A UDP echo: each datagram goes back unchanged to its sender. `connections` counts the
 * distinct senders (one per flow through a vendor: its onward socket), received and sent
 * hash the datagrams in arrival order.
 */
function udpEcho(port: () => number): dgram.Socket {
  const socket = dgram.createSocket({ type: args.host.includes(':') ? 'udp6' : 'udp4' });
  const senders = new Set<string>();
  socket.on('message', (message, from) => {
    const t = tally(port());
    const sender = `${from.address}:${from.port}`;
    if (!senders.has(sender)) {
      senders.add(sender);
      t.connections++;
    }
    t.received.update(message);
    t.receivedBytes += message.length;
    t.sent.update(message);
    socket.send(message, from.port, from.address);
  });
  return socket;
}

/** Binds; resolves with the error instead of throwing (the socket is then closed), so that the caller can try another port. */
function bindUdp(socket: dgram.Socket, port: number, host: string): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      socket.close();
      resolve(error);
    };
    socket.once('error', onError);
    socket.bind(port, host, () => {
      socket.off('error', onError);
      // A later send error (a sender gone) must not end the origin, which serves every other flow: it is reported, the echo goes on.
      socket.on('error', (error) => process.stderr.write(`testbed origin: UDP port ${port}: ${error.message}\n`));
      resolve(undefined);
    });
  });
}

/** Listens; resolves with the error instead of throwing, so that the caller can try another port. */
function listen(server: net.Server, port: number, host: string): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    const onError = (error: NodeJS.ErrnoException): void => resolve(error);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve(undefined);
    });
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`testbed origin: ${String(error)}\n`);
  process.exit(1);
});
