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
 * The opaque leg: the bytes already read (`head`: a ClientHello, another protocol's first
 * line, unrecognised bytes under `relay`) go first, then both ways unchanged until either
 * side ends. The proxy sees nothing more of the connection.
 */
export async function splice(conn: AcceptedConnection, head: Buffer, onward: OnwardSettings, reporter: Reporter): Promise<void> {
  let upstream: net.Socket;
  try {
    upstream = await conn.connectOnward({ timeoutMs: onward.connectTimeoutMs, propagateRecords: onward.propagateRecords });
  } catch (error) {
    reporter.fail('connection-failed', conn.id, errorCodeOf(error, TlsErrorCode.OriginUnreachable), (error as Error).message);
    conn.socket.destroy();
    return;
  }
  upstream.write(head);
  conn.socket.resume();
  const result = await relay(conn.socket, upstream);
  if (result.error !== undefined) reporter.fail('connection-failed', conn.id, errorCodeOf(result.error, TlsErrorCode.Reset), result.error.message);
}
