/**
 * A child of the comparison bench, run inside its network namespace: an HTTP load
 * generator in Node for what wrk cannot measure. On the embedded backend a connection is
 * redirected only when the application dials through core's `connect()` (it writes the
 * PROXY v2 header with the records to the vendor's listener); wrk opens plain sockets, so
 * it would go straight to the origin. This client uses core's `createAgent({ registry })`
 * for the embedded rows and a plain `http.Agent` otherwise, so that direct, the nftables
 * chain and the embedded chain are measured by the same client.
 *
 * Modes, as the wrk runs: `keep-alive` (GET of the small file, `concurrency` loops on
 * kept-alive connections), `close` (a new connection per request, `Connection: close`),
 * `bulk` (one loop downloading the large file). Bounded by `seconds` (in-flight requests
 * are cut at the deadline, their bytes counted) and a per-request timeout. Prints one
 * JSON line: requests, bytes, seconds, errors, latency percentiles.
 */
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { createAgent } from '@coproxy/core';

interface LoadArgs {
  readonly host: string;
  readonly port: number;
  readonly registry?: string;
  readonly mode: 'keep-alive' | 'close' | 'bulk';
  readonly path: string;
  readonly seconds: number;
  readonly concurrency: number;
  readonly timeoutMs: number;
}

/** Latencies kept for the percentiles; beyond this many requests the rest are not sampled. */
const MAX_SAMPLES = 2_000_000;

const args = JSON.parse(process.argv[2] ?? '{}') as LoadArgs;

async function main(): Promise<void> {
  const keepAlive = args.mode !== 'close';
  const concurrency = args.mode === 'bulk' ? 1 : args.concurrency;
  const agentOptions = { keepAlive, maxSockets: concurrency, maxFreeSockets: concurrency };
  const agent = args.registry === undefined ? new http.Agent(agentOptions) : createAgent({ ...agentOptions, registry: args.registry });
  const latencies = new Float64Array(MAX_SAMPLES);
  let requests = 0;
  let bytes = 0;
  let errors = 0;
  let firstError: string | undefined;
  const active = new Set<http.ClientRequest>();
  const start = performance.now();
  const deadline = start + args.seconds * 1000;
  let stopped = false;
  const stopTimer = setTimeout(() => {
    stopped = true;
    for (const request of active) request.destroy();
  }, args.seconds * 1000);

  const once = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const request = http.get({
        agent,
        host: args.host,
        port: args.port,
        path: args.path,
        headers: keepAlive ? {} : { connection: 'close' },
      });
      active.add(request);
      // Settles once, whichever comes first: the body's end, an error, or the request's close
      // (a request destroyed at the deadline may close without an 'error').
      let settled = false;
      const settle = (error?: Error): void => {
        if (settled) return;
        settled = true;
        active.delete(request);
        if (error === undefined) resolve();
        else reject(error);
      };
      request.setTimeout(args.timeoutMs, () => request.destroy(new Error(`no response within ${args.timeoutMs} ms`)));
      request.once('error', settle);
      request.once('close', () => settle(new Error('closed before the response was complete')));
      request.once('response', (response) => {
        if (response.statusCode !== 200) {
          response.resume();
          request.destroy(new Error(`status ${String(response.statusCode)}`));
          return;
        }
        response.on('data', (chunk: Buffer) => (bytes += chunk.length));
        response.once('end', () => settle());
        response.once('aborted', () => settle(new Error('aborted')));
      });
    });

  const loop = async (): Promise<void> => {
    while (!stopped && performance.now() < deadline) {
      const begin = performance.now();
      try {
        await once();
        if (requests < MAX_SAMPLES) latencies[requests] = performance.now() - begin;
        requests++;
      } catch (error) {
        if (stopped) return; // cut at the deadline: not an error
        errors++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  clearTimeout(stopTimer);
  const seconds = (performance.now() - start) / 1000;
  agent.destroy();
  const sorted = latencies.subarray(0, Math.min(requests, MAX_SAMPLES)).sort();
  const percentile = (p: number): number => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!);
  process.stdout.write(
    `${JSON.stringify({ requests, bytes, seconds, errors, ...(firstError !== undefined && { firstError }), p50Ms: percentile(50), p99Ms: percentile(99) })}\n`,
  );
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`load-client: ${String(error)}\n`);
    process.exit(1);
  },
);
