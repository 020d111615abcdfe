import dns from 'node:dns/promises';
import net from 'node:net';
import { encodeFlowHeader } from '../backends/embedded/flow-header.js';
import { defaultRegistryDir, isProcessAlive, registryTable, type TableEntry } from '../backends/embedded/registry.js';
import { errnoCode, RedirectorUnavailableError } from '../errors.js';
import { RedirectRecords } from '../records/redirect-records.js';
import type { Destination } from '../redirector/match-rule.js';
import { candidates } from './classify.js';

export interface ConnectOptions {
  readonly host: string;
  readonly port: number;
  /** Restrict name resolution to one family. */
  readonly family?: 4 | 6;
  readonly localAddress?: string;
  /**
   * As for `net.connect`: default `false`, the socket ends its side when the peer does.
   * Proxies relaying a stream set `true` so that half-closes pass through.
   */
  readonly allowHalfOpen?: boolean;
  /** The embedded registry to classify against; default as for redirectors. */
  readonly registry?: string;
}

/**
 * Opens a TCP connection through the embedded redirect layer: what an app calls instead
 * of `net.connect`. The connection is classified against the installed redirectors in
 * priority order; the first whose rule matches and whose redirect state allows it gets
 * the connection, announced by a PROXY v2 header. With none, it goes straight to the
 * destination. Resolves once connected; network errors reject as `net` reports them.
 *
 * @example
 * ```ts
 * const socket = await connect({ host: 'example.test', port: 80 });
 * socket.end('GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n');
 * ```
 */
export function connect(options: ConnectOptions): Promise<net.Socket> {
  return connectWithRecords(options, RedirectRecords.empty);
}

/** `connect` for a flow that already has a redirect history (a proxy's onward leg). */
export async function connectWithRecords(options: ConnectOptions, records: RedirectRecords): Promise<net.Socket> {
  const destination = await resolve(options);
  const table = registryTable(options.registry ?? defaultRegistryDir()).current();
  for (const candidate of candidates(table, destination, records)) {
    const { entry } = candidate;
    if (!isProcessAlive(entry.pid)) {
      if (entry.failMode === 'open') continue;
      throw new RedirectorUnavailableError(entry.id, `its process ${entry.pid} is gone`);
    }
    try {
      return await dialRedirector(candidate, destination, records.withRedirect(entry.id), options);
    } catch (error) {
      if (!isRefusal(error)) throw error;
      if (entry.failMode === 'closed') {
        throw new RedirectorUnavailableError(entry.id, 'its listener refused the connection', { cause: error });
      }
      // fail-open: a redirector that is not listening is as good as not installed
    }
  }
  return dial({
    host: destination.address,
    port: destination.port,
    family: destination.family,
    ...socketOptions(options),
  });
}

async function resolve(options: ConnectOptions): Promise<Destination> {
  const literal = net.isIP(options.host);
  if (literal !== 0) return { address: options.host, port: options.port, family: literal as 4 | 6 };
  const { address, family } = await dns.lookup(options.host, { family: options.family ?? 0 });
  return { address, port: options.port, family: family as 4 | 6 };
}

function socketOptions(options: ConnectOptions): Partial<net.TcpNetConnectOpts> {
  return {
    ...(options.localAddress !== undefined && { localAddress: options.localAddress }),
    ...(options.allowHalfOpen !== undefined && { allowHalfOpen: options.allowHalfOpen }),
  };
}

function isRefusal(error: unknown): boolean {
  const code = errnoCode(error);
  return code === 'ECONNREFUSED' || code === 'ECONNRESET';
}

function dialRedirector(
  candidate: TableEntry,
  destination: Destination,
  records: RedirectRecords,
  options: ConnectOptions,
): Promise<net.Socket> {
  const { entry } = candidate;
  return dial(
    { host: entry.listen.host, port: entry.listen.port, ...socketOptions(options) },
    (socket) =>
      encodeFlowHeader({
        source: { address: socket.localAddress ?? '0.0.0.0', port: socket.localPort ?? 0 },
        destination,
        records,
        pid: process.pid,
        ...(candidate.context !== undefined && { context: { owner: entry.id, bytes: candidate.context } }),
      }),
  );
}

function dial(options: net.TcpNetConnectOpts, header?: (socket: net.Socket) => Buffer): Promise<net.Socket> {
  return new Promise((resolvePromise, reject) => {
    const socket = net.connect(options);
    const onError = (error: Error): void => {
      socket.destroy();
      reject(error);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      if (header !== undefined) {
        // Corked until the next turn, so the header and the app's first write (which
        // follows the resolved promise) leave in one segment.
        socket.cork();
        socket.write(header(socket));
        setImmediate(() => socket.uncork());
      }
      resolvePromise(socket);
    });
  });
}
