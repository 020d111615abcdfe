import type net from 'node:net';
import { CoproxyError, ProxyHeaderIncompleteError, ProxyHeaderMalformedError, ProxyHeaderTimeoutError } from '../../model/errors.js';
import { decodeFlowHeader, type FlowHeader } from './flow-header.js';
import { decodeProxyV2, type ProxyV2Header } from './proxy-v2.js';

export interface ReadFlowHeaderOptions {
  readonly timeoutMs: number;
  readonly maxHeaderBytes: number;
  /**
   * Called with the header's bytes and their PROXY v2 decoding before anything in its
   * TLVs is interpreted; throws a `CoproxyError` to refuse the peer.
   */
  readonly authenticate?: (raw: Buffer, header: ProxyV2Header) => void;
}

/**
 * Reads the PROXY v2 header that starts a redirected connection, then hands the socket
 * back as a fresh stream, with any payload bytes that came in the same segment pushed
 * back in front.
 * Rejects with a `CoproxyError` on a bad, oversized, slow or truncated header; the caller
 * destroys the socket.
 */
export function readFlowHeader(
  socket: net.Socket,
  options: ReadFlowHeaderOptions,
): Promise<{ flow: FlowHeader; headerBytes: number }> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (error: CoproxyError | undefined, result?: { flow: FlowHeader; headerBytes: number }): void => {
      clearTimeout(timer);
      // Removing the last 'readable' listener puts the stream back in its initial mode, so
      // the consumer can attach 'data', pipe or read exactly as on a fresh socket.
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onEnd);
      if (error !== undefined) reject(error);
      else resolve(result!);
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
        try {
          const decoded = decodeProxyV2(buffered, options.maxHeaderBytes);
          if (decoded === undefined) continue;
          options.authenticate?.(buffered.subarray(0, decoded.length), decoded.header);
          const flow = decodeFlowHeader(decoded.header);
          const rest = buffered.subarray(decoded.length);
          if (rest.length > 0) socket.unshift(rest);
          finish(undefined, { flow, headerBytes: decoded.length });
        } catch (error) {
          finish(asCoproxyError(error));
        }
        return;
      }
    };
    const onEnd = (): void => finish(new ProxyHeaderIncompleteError(buffered.length));
    const onError = (error: Error): void => finish(new ProxyHeaderIncompleteError(buffered.length, { cause: error }));
    const timer = setTimeout(
      () => finish(new ProxyHeaderTimeoutError(options.timeoutMs, buffered.length)),
      options.timeoutMs,
    );
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
    socket.once('error', onError);
  });
}

/** Narrows whatever the header path threw to a typed error; used by the listener too. */
export function asCoproxyError(error: unknown): CoproxyError {
  if (error instanceof CoproxyError) return error;
  // A decoder bug must still end in a typed rejection, never an unhandled throw.
  return new ProxyHeaderMalformedError('decoder failure', { cause: error });
}
