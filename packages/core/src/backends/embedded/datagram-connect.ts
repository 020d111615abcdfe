import net from 'node:net';
import { Observable, share } from 'rxjs';
import { InvalidOptionsError, RedirectorUnavailableError } from '../../model/errors.js';
import type { Destination } from '../../model/match-rule.js';
import { MAX_REDIRECTS, RedirectRecords } from '../../model/redirect-records.js';
import { type OnwardDatagramSocket, openOnwardDatagram } from '../../net/onward-datagram.js';
import { udpPeerUid } from '../../net/peer-uid.js';
import { candidates } from './classify.js';
import { resolve, trustedTable, warnOnce } from './connect.js';
import { encodeDatagramHeader } from './datagram-header.js';
import { defaultRegistryDir, isProcessAlive, type TableEntry } from './registry.js';

export interface ConnectDatagramOptions {
  readonly host: string;
  readonly port: number;
  /** Restrict name resolution to one family. */
  readonly family?: 4 | 6;
  /** The embedded registry to classify against; default as for redirectors. */
  readonly registry?: string;
}

/**
 * Opens a UDP "connection" through the embedded redirect layer: what an app calls instead
 * of `dgram.createSocket` + `connect`. Classified against the installed redirectors whose
 * rule names the port in `udpPorts`, in priority order; the first that may take it gets
 * every datagram, each prefixed with an authenticated flow header (datagram-header.ts);
 * replies come back without framing. With none, the socket is connected to the
 * destination itself.
 *
 * Fail-open covers a redirector whose process is gone; a listener that is alive but
 * unreachable shows as `ECONNREFUSED` on the socket, as UDP reports it (no handshake to
 * fail first).
 *
 * @example
 * ```ts
 * const socket = await connectDatagram({ host: '192.0.2.1', port: 53 });
 * socket.datagrams$.subscribe((reply) => console.log(reply));
 * socket.send(query);
 * ```
 */
export function connectDatagram(options: ConnectDatagramOptions): Promise<OnwardDatagramSocket> {
  return connectDatagramWithRecords(options, RedirectRecords.empty);
}

/** `connectDatagram` for a flow that already has a redirect history (a vendor's onward leg). */
export async function connectDatagramWithRecords(options: ConnectDatagramOptions, records: RedirectRecords): Promise<OnwardDatagramSocket> {
  if (typeof options.host !== 'string' || options.host === '') throw new InvalidOptionsError('must be a host name or address', 'host');
  if (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535) {
    throw new InvalidOptionsError(`must be an integer in 1..65535, got ${String(options.port)}`, 'port');
  }
  const destination = await resolve(options);
  for (const candidate of candidates(trustedTable(options.registry ?? defaultRegistryDir()), destination, records, 'udp')) {
    const { entry } = candidate;
    if (records.hops >= MAX_REDIRECTS) {
      warnOnce('records-full', `a UDP flow crossed ${MAX_REDIRECTS} redirectors; '${entry.id}' and any later ones are skipped for it`, 'CoproxyRecordsFullWarning');
      break;
    }
    const listener = datagramListener(candidate);
    if (!isProcessAlive(entry.pid) || listener === undefined) {
      const why = listener === undefined ? 'has no valid datagram listener' : `is gone (pid ${entry.pid})`;
      if (entry.failMode === 'closed') throw new RedirectorUnavailableError(entry.id, `it ${why}`);
      warnOnce(`entry ${entry.nonce}`, `redirector '${entry.id}' ${why}; failing open past it`, 'CoproxyFailOpenWarning');
      continue;
    }
    return openRedirected(candidate, listener, destination, records.withRedirect(entry.id));
  }
  return openOnwardDatagram({ destination });
}

async function openRedirected(candidate: TableEntry, listener: Destination, destination: Destination, records: RedirectRecords): Promise<OnwardDatagramSocket> {
  const { entry } = candidate;
  const socket = await openOnwardDatagram({ destination: listener });
  let header: Buffer;
  try {
    header = encodeDatagramHeader(
      {
        source: socket.local,
        destination,
        records,
        pid: process.pid,
        ...(candidate.context !== undefined && { context: { owner: entry.id, bytes: candidate.context } }),
      },
      candidate.key, // proves to the listener that we read its 0600 registry entry
    );
  } catch (error) {
    socket.close();
    throw error;
  }
  // The socket is only connected to the listener's address and port: once the redirector
  // is gone, whoever binds that port next would get every datagram (header and payload)
  // and could answer as the destination. So each datagram, either way, first asks the
  // kernel (sock_diag, ~11 µs) who owns the socket on that port now: not this user (the
  // registry's owner, I7), and the flow ends with COPROXY_REDIRECTOR_UNAVAILABLE, nothing
  // sent, nothing taken. Nobody on the port (undefined) is a refusal the socket reports itself.
  const owner = process.getuid?.();
  const ours = (): boolean => {
    if (owner === undefined) return true;
    const uid = udpPeerUid(listener, socket.local);
    return uid === undefined || uid === owner;
  };
  let gone: RedirectorUnavailableError | undefined;
  const lost = (): RedirectorUnavailableError => {
    gone ??= new RedirectorUnavailableError(entry.id, 'its datagram listener port now belongs to another user');
    socket.close();
    return gone;
  };
  const datagrams$ = new Observable<Buffer>((subscriber) => {
    if (gone !== undefined) return subscriber.error(gone);
    return socket.datagrams$.subscribe({
      next: (payload) => (ours() ? subscriber.next(payload) : subscriber.error(lost())),
      error: (error: unknown) => subscriber.error(gone ?? error),
      complete: () => (gone === undefined ? subscriber.complete() : subscriber.error(gone)),
    });
  }).pipe(share());
  return {
    local: socket.local,
    datagrams$,
    counts: socket.counts,
    send: (payload) => {
      if (gone !== undefined) return;
      if (!ours()) return void lost();
      socket.send(Buffer.concat([header, payload]));
    },
    close: () => socket.close(),
  };
}

/** The entry's datagram listener, if it names a loopback-or-any address and a port; the file is the owner's, but checked all the same. */
function datagramListener({ entry }: TableEntry): Destination | undefined {
  const listen = entry.udpListen;
  if (typeof listen !== 'object' || listen === null) return undefined;
  const family = net.isIP(listen.host);
  if (family === 0 || !Number.isInteger(listen.port) || listen.port < 1 || listen.port > 65535) return undefined;
  return { address: listen.host, port: listen.port, family: family as 4 | 6 };
}

