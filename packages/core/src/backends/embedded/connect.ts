import dns from 'node:dns/promises';
import net from 'node:net';
import { errnoCode, InvalidOptionsError, RedirectorUnavailableError, RegistryError } from '../../model/errors.js';
import type { Destination } from '../../model/match-rule.js';
import { MAX_REDIRECTS, RedirectRecords } from '../../model/redirect-records.js';
import { dial } from '../../net/dial.js';
import { candidates } from './classify.js';
import { encodeFlowHeader } from './flow-header.js';
import { defaultRegistryDir, isProcessAlive, registryTable, type TableEntry } from './registry.js';

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
  /** Give up the TCP handshake after this long (`COPROXY_CONNECT_TIMEOUT`). No limit by default, as `net`. */
  readonly timeoutMs?: number;
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
  if (typeof options.host !== 'string' || options.host === '') throw new InvalidOptionsError('must be a host name or address', 'host');
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) {
    throw new InvalidOptionsError(`must be an integer in 1..65535, got ${String(options.port)}`, 'port');
  }
  if (options.timeoutMs !== undefined && (!Number.isInteger(options.timeoutMs) || options.timeoutMs <= 0 || options.timeoutMs > 2 ** 31 - 1)) {
    throw new InvalidOptionsError('must be a positive integer of at most 2^31-1 ms', 'timeoutMs');
  }
  const destination = await resolve(options);
  const table = trustedTable(options.registry ?? defaultRegistryDir());
  for (const candidate of candidates(table, destination, records)) {
    const { entry } = candidate;
    if (records.hops >= MAX_REDIRECTS) {
      // I2: a flow that has crossed the bound goes to its destination, and says so.
      warnOnce(
        'records-full',
        `a flow crossed ${MAX_REDIRECTS} redirectors; '${entry.id}' and any later ones are skipped for it`,
        'CoproxyRecordsFullWarning',
      );
      break;
    }
    if (!isProcessAlive(entry.pid)) {
      if (entry.failMode === 'open') {
        warnOnce(`entry ${entry.nonce}`, `redirector '${entry.id}' (pid ${entry.pid}) is gone; failing open past it`, 'CoproxyFailOpenWarning');
        continue;
      }
      throw new RedirectorUnavailableError(entry.id, `its process ${entry.pid} is gone`);
    }
    try {
      return await dialRedirector(candidate, destination, records.withRedirect(entry.id), options);
    } catch (error) {
      if (entry.failMode === 'closed') {
        throw new RedirectorUnavailableError(entry.id, `its listener cannot be reached (${errnoCode(error) ?? String(error)})`, {
          cause: error,
        });
      }
      // fail-open: a redirector whose listener cannot be reached is as good as not installed
      warnOnce(
        `entry ${entry.nonce}`,
        `redirector '${entry.id}' cannot be reached (${errnoCode(error) ?? String(error)}); failing open past it`,
        'CoproxyFailOpenWarning',
      );
    }
  }
  return dial({
    host: destination.address,
    port: destination.port,
    family: destination.family,
    ...socketOptions(options),
    timeoutMs: options.timeoutMs,
  });
}

/**
 * The registry's table, or none when the registry cannot be trusted (not private) or
 * read: then no redirector can be told apart from an impostor, and refusing every
 * connection would let any local user who squats the path cut this one off. The app's
 * connection goes direct, with a warning; vendors cannot install there at all.
 */
export function trustedTable(dir: string): readonly TableEntry[] {
  try {
    return registryTable(dir).current();
  } catch (error) {
    if (!(error instanceof RegistryError)) throw error;
    warnOnce(`registry ${error.message}`, `ignoring the registry: ${error.message}`, 'CoproxyRegistryWarning');
    return [];
  }
}

/** The destination as an address: a literal as given, a name looked up (`family` narrows it). */
export async function resolve(options: Pick<ConnectOptions, 'host' | 'port' | 'family'>): Promise<Destination> {
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

/** Flows that pass a redirector uninspected are not silent, but one warning per cause is enough. */
const warned = new Set<string>();
export function warnOnce(key: string, message: string, type: string): void {
  if (warned.has(key)) return;
  warned.add(key);
  process.emitWarning(`coproxy: ${message}`, type);
}

function dialRedirector(
  candidate: TableEntry,
  destination: Destination,
  records: RedirectRecords,
  options: ConnectOptions,
): Promise<net.Socket> {
  const { entry } = candidate;
  return dial(
    // Not the app's localAddress: the redirector listens on loopback, and the app's source
    // address would not even be of the right family there.
    {
      host: entry.listen.host,
      port: entry.listen.port,
      ...(options.allowHalfOpen !== undefined && { allowHalfOpen: options.allowHalfOpen }),
      timeoutMs: options.timeoutMs,
    },
    (socket) =>
      encodeFlowHeader({
        source: { address: socket.localAddress ?? '0.0.0.0', port: socket.localPort ?? 0 },
        destination,
        records,
        pid: process.pid,
        ...(candidate.context !== undefined && { context: { owner: entry.id, bytes: candidate.context } }),
      }, candidate.key), // proves to the listener that we read its 0600 registry entry
  );
}
