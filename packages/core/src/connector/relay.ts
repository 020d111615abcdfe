import type net from 'node:net';
import { pipeline } from 'node:stream';

export interface RelayResult {
  /** Payload bytes written towards the upstream side. */
  readonly fromClient: number;
  /** Payload bytes written back to the client. */
  readonly toClient: number;
  /** The first error on either leg, which tore both legs down. */
  readonly error?: Error;
}

/**
 * Splices two sockets both ways, the way a proxy that has finished inspecting forwards the
 * rest: backpressure through `stream.pipeline`, half-closes passed on (one side's FIN ends
 * the other side's writing only), and an error on either leg destroys both. Resolves when
 * both directions are done; it never rejects, the error is in the result.
 *
 * @example
 * ```ts
 * const upstream = await conn.connectOnward();
 * const { fromClient, toClient } = await relay(conn.socket, upstream);
 * ```
 */
export function relay(client: net.Socket, upstream: net.Socket): Promise<RelayResult> {
  const clientAlreadyWritten = client.bytesWritten;
  const upstreamAlreadyWritten = upstream.bytesWritten;
  return new Promise((resolve) => {
    let pending = 2;
    let firstError: Error | undefined;
    const legDone = (error?: Error | null): void => {
      if (error) {
        firstError ??= error;
        client.destroy();
        upstream.destroy();
      }
      if (--pending > 0) return;
      resolve({
        fromClient: upstream.bytesWritten - upstreamAlreadyWritten,
        toClient: client.bytesWritten - clientAlreadyWritten,
        ...(firstError !== undefined && { error: firstError }),
      });
    };
    pipeline(client, upstream, legDone);
    pipeline(upstream, client, legDone);
  });
}
