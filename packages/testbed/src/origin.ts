/**
 * The origin process of a testbed run: one listener per flow (its port is the flow's
 * tag), HTTP, HTTPS (certificates minted per SNI from the run's test CA) or TCP echo. It
 * hashes what each flow brought and what it answered, and reports on request over IPC.
 */
import { createHash, type Hash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { CertificateAuthority } from '@coproxy/proxy-tls';
import type { FlowSpec } from './flows.js';
import type { OriginFlowReport, OriginMessage } from './protocol.js';

interface Args {
  readonly host: string;
  readonly flows: readonly FlowSpec[];
  readonly caDir: string;
}

interface Tally {
  connections: number;
  received: Hash;
  receivedBytes: number;
  sent: Hash;
}

const args = JSON.parse(process.argv[2] ?? '{}') as Args;
const send = (message: OriginMessage): void => void process.send?.(message);
const tallies = new Map<number, Tally>();
const tally = (port: number): Tally => {
  let t = tallies.get(port);
  if (t === undefined) tallies.set(port, (t = { connections: 0, received: createHash('sha256'), receivedBytes: 0, sent: createHash('sha256') }));
  return t;
};

/** HTTP and HTTPS: each request's body is hashed; the answer is the body's SHA-256, as text. */
function answer(port: number) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const t = tally(port);
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
  const servers: net.Server[] = [];
  for (const flow of args.flows) {
    let server: net.Server;
    if (flow.kind === 'http') {
      server = http.createServer({ keepAliveTimeout: 30_000 }, answer(flow.port));
    } else if (flow.kind === 'https') {
      server = https.createServer(
        { SNICallback: (name, done) => void ca.contextFor(name).then((context) => done(null, context), (error: Error) => done(error)) },
        answer(flow.port),
      );
    } else {
      server = net.createServer({ allowHalfOpen: true }, (socket) => {
        const t = tally(flow.port);
        socket.on('data', (chunk: Buffer) => {
          t.received.update(chunk);
          t.receivedBytes += chunk.length;
          t.sent.update(chunk);
          socket.write(chunk);
        });
        socket.on('end', () => socket.end());
        socket.on('error', () => socket.destroy());
      });
    }
    server.on('connection', () => tally(flow.port).connections++);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(flow.port, args.host, () => resolve());
    });
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
  send({ ready: true });
}

main().catch((error: unknown) => {
  process.stderr.write(`testbed origin: ${String(error)}\n`);
  process.exit(1);
});
