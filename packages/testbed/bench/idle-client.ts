/**
 * A child of the comparison bench, run inside its network namespace: opens `count`
 * connections to the origin, makes one keep-alive request on each (GET of the 1 KiB
 * file, so every proxy in the path has set the flow up end to end, origin leg included),
 * then leaves them all open and idle. It prints one JSON line when they are (`{ open,
 * failed, firstError }`) and closes them all when its stdin ends or it gets SIGTERM.
 *
 * With `registry`, it dials through core's `connect()`, so the embedded backend
 * redirects it; otherwise a plain socket, which the kernel redirects (nftables) or not.
 */
import net from 'node:net';
import tls from 'node:tls';
import { connect } from '@coproxy/core';

interface IdleArgs {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly count: number;
  readonly path: string;
  readonly bodyBytes: number;
  readonly registry?: string;
  /** Connections being set up at once. */
  readonly concurrency: number;
  readonly timeoutMs: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as IdleArgs;
const sockets: net.Socket[] = [];

async function open(): Promise<net.Socket> {
  const raw = args.registry === undefined ? undefined : await connect({ host: args.host, port: args.port, registry: args.registry, timeoutMs: args.timeoutMs });
  const socket: net.Socket = args.tls
    ? tls.connect({ ...(raw === undefined ? { host: args.host, port: args.port } : { socket: raw }), rejectUnauthorized: false, servername: 'origin.test' })
    : (raw ?? net.connect({ host: args.host, port: args.port }));
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    let received = 0;
    let headEnd = -1;
    let head = '';
    const timer = setTimeout(() => finish(new Error(`no complete response within ${args.timeoutMs} ms`)), args.timeoutMs);
    let done = false;
    const finish = (error?: Error): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('data', onData);
      if (error === undefined) resolve(socket);
      else {
        socket.destroy();
        reject(error);
      }
    };
    const onData = (chunk: Buffer): void => {
      if (headEnd < 0) {
        head += chunk.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (!head.startsWith('HTTP/1.1 200')) return finish(new Error(`unexpected response: ${head.slice(0, head.indexOf('\r\n'))}`));
        headEnd = end + 4;
        received = head.length - headEnd;
      } else {
        received += chunk.length;
      }
      if (received >= args.bodyBytes) finish();
    };
    socket.on('data', onData);
    socket.once('error', (error: Error) => finish(error));
    socket.once('close', () => finish(new Error('closed before the response was complete')));
    socket.write(`GET ${args.path} HTTP/1.1\r\nHost: ${args.host}\r\nUser-Agent: coproxy-compare-idle\r\n\r\n`);
  });
}

async function main(): Promise<void> {
  let next = 0;
  let failed = 0;
  let firstError: string | undefined;
  const worker = async (): Promise<void> => {
    while (next < args.count) {
      next++;
      try {
        await open();
      } catch (error) {
        failed++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, args.count) }, worker));
  // Idle from here: errors (a proxy timing the connection out) must not crash the client.
  for (const socket of sockets) socket.on('error', () => socket.destroy());
  const stillOpen = sockets.filter((s) => !s.destroyed).length;
  process.stdout.write(`${JSON.stringify({ open: stillOpen, failed, ...(firstError !== undefined && { firstError }) })}\n`);
  const close = (): void => {
    for (const socket of sockets) socket.destroy();
    process.exit(0);
  };
  process.stdin.on('end', close);
  process.stdin.on('error', close);
  process.stdin.resume();
  process.on('SIGTERM', close);
}

main().catch((error: unknown) => {
  process.stderr.write(`idle-client: ${String(error)}\n`);
  process.exit(1);
});
