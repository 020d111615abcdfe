/**
 * A child of the comparison bench, run inside its network namespace: the latency probe
 * (issue #17). One connection at a time, `count` times (or until `seconds` have passed):
 * open a connection (TLS when `tls`; nothing verified), send `GET path` with
 * `Connection: close`, and time from the moment the connect starts to the first byte of
 * the response; then read the response to its end (the server closes) and go on with the
 * next. Through a proxy that is everything a new flow costs it before the first byte:
 * the redirect, the accept, the records, the onward connect, and for TLS the handshake
 * (through coproxy-tls splice: the hello read and parsed, then relayed).
 *
 * Prints one JSON line: requests, errors, firstError, seconds, p50Ms, p99Ms.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import tls from 'node:tls';

interface ProbeArgs {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  readonly path: string;
  readonly count: number;
  readonly seconds: number;
  readonly timeoutMs: number;
}

const args = JSON.parse(process.argv[2] ?? '{}') as ProbeArgs;

/** Time to the response's first byte, ms; rejects on an error, a close before any byte, or the timeout. */
function once(): Promise<number> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    let firstByte: number | undefined;
    const request = `GET ${args.path} HTTP/1.1\r\nHost: ${args.host}\r\nConnection: close\r\n\r\n`;
    const socket: net.Socket = args.tls
      ? tls.connect({ host: args.host, port: args.port, rejectUnauthorized: false, servername: 'origin.test' }, () => socket.write(request))
      : net.connect({ host: args.host, port: args.port }, () => socket.write(request));
    let settled = false;
    const settle = (error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (error !== undefined) reject(error);
      else if (firstByte === undefined) reject(new Error('closed before any response byte'));
      else resolve(firstByte - start);
    };
    const timer = setTimeout(() => settle(new Error(`no complete response within ${args.timeoutMs} ms`)), args.timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      if (firstByte === undefined) {
        firstByte = performance.now();
        if (!chunk.subarray(0, 12).toString('latin1').startsWith('HTTP/1.1 200')) settle(new Error(`not a 200: ${chunk.subarray(0, 40).toString('latin1')}`));
      }
    });
    socket.once('end', () => settle());
    socket.once('error', settle);
    socket.once('close', () => settle());
  });
}

async function main(): Promise<void> {
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const deadline = start + args.seconds * 1000;
  for (let i = 0; i < args.count && performance.now() < deadline; i++) {
    try {
      latencies.push(await once());
    } catch (error) {
      errors++;
      firstError ??= error instanceof Error ? error.message : String(error);
    }
  }
  const sorted = latencies.sort((a, b) => a - b);
  const percentile = (p: number): number => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!);
  const seconds = (performance.now() - start) / 1000;
  process.stdout.write(`${JSON.stringify({ requests: sorted.length, errors, ...(firstError !== undefined && { firstError }), seconds, p50Ms: percentile(50), p99Ms: percentile(99) })}\n`);
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`ttfb-client: ${String(error)}\n`);
    process.exit(1);
  },
);
