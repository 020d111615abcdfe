import type net from 'node:net';
import { type AcceptedConnection, errorCodeOf, relay } from '@coproxy/core';
import { TlsErrorCode } from './errors.js';
import type { Reporter } from './reporter.js';

/** How an onward connection is made, for splice and bump alike. */
export interface OnwardSettings {
  readonly connectTimeoutMs: number;
  /** Whether the onward connection carries the redirect records the client's had (see `TlsProxyOptions`). */
  readonly propagateRecords: boolean;
}

/**
 * An onward connection dialled before the decision (`earlyOnward`), its outcome settled
 * into a value at once: a dial that fails while the hello is still being read is then no
 * unhandled rejection, and is reported only if the flow turns out to need it.
 */
export type EarlyOnward = Promise<{ readonly socket: net.Socket } | { readonly error: unknown }>;

export function dialOnward(conn: AcceptedConnection, onward: OnwardSettings): EarlyOnward {
  return conn.connectOnward({ timeoutMs: onward.connectTimeoutMs, propagateRecords: onward.propagateRecords }).then(
    (socket) => ({ socket }),
    (error: unknown) => ({ error }),
  );
}

/** The flow was not spliced: the early onward connection closes with nothing written on it. */
export function cancelOnward(early: EarlyOnward, conn: AcceptedConnection, reporter: Reporter): void {
  void early.then((result) => {
    if ('socket' in result) return void result.socket.destroy();
    // Reported already as the redirector's 'onward-failed' event; the flow did not need it.
    reporter.logger.debug({ connectionId: conn.id, err: result.error }, 'early onward connection failed');
  });
}

/**
 * The opaque leg: the bytes already read (`head`: a ClientHello, another protocol's first
 * line, unrecognised bytes under `relay`) go first, then both ways unchanged until either
 * side ends. The proxy sees nothing more of the connection. `early`: the onward connection
 * already being dialled (`earlyOnward`); without it, the dial starts now.
 */
export async function splice(conn: AcceptedConnection, head: Buffer, onward: OnwardSettings, reporter: Reporter, early?: EarlyOnward): Promise<void> {
  const dialled = await (early ?? dialOnward(conn, onward));
  if ('error' in dialled) {
    const { error } = dialled;
    reporter.fail('connection-failed', conn.id, errorCodeOf(error, TlsErrorCode.OriginUnreachable), (error as Error).message);
    conn.socket.destroy();
    return;
  }
  const upstream = dialled.socket;
  upstream.write(head);
  conn.socket.resume();
  const result = await relay(conn.socket, upstream);
  if (result.error !== undefined) reporter.fail('connection-failed', conn.id, errorCodeOf(result.error, TlsErrorCode.Reset), result.error.message);
}
