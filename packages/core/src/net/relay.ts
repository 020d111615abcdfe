import net from 'node:net';
import { socketBytes, spliceBurst } from './kernel-splice.js';

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
 * rest: with backpressure (each direction reads into one reused buffer, bulk bytes move
 * in the kernel on Linux: see `kernel-splice.ts`; `pipe` where neither applies),
 * half-closes passed on (one side's FIN ends only the other side's writing), and an error
 * or an abrupt close on either leg destroys both. Resolves when both sockets have closed;
 * it never rejects, the error is in the result.
 *
 * `pipe` rather than `stream.pipeline`: on Node 20 every pipeline allocates an
 * AbortController and aborts it on completion, which builds a DOMException with a stack;
 * at thousands of connections per second that was a tenth of a vendor's CPU.
 *
 * @example
 * ```ts
 * const upstream = await conn.connectOnward();
 * const { fromClient, toClient } = await relay(conn.socket, upstream);
 * ```
 */
export function relay(client: net.Socket, upstream: net.Socket): Promise<RelayResult> {
  const clientAlreadyWritten = socketBytes(client).written;
  const upstreamAlreadyWritten = socketBytes(upstream).written;
  if (client.destroyed || upstream.destroyed) {
    // A leg already gone (a client that gave up while the onward leg was opening) emits
    // no more 'close': tear down the other one and report it now.
    client.destroy();
    upstream.destroy();
    return Promise.resolve({ fromClient: 0, toClient: 0, error: prematureClose() });
  }
  return new Promise((resolve) => {
    let firstError: Error | undefined;
    let closed = 0;
    const fail = (error: Error): void => {
      firstError ??= error;
      client.destroy();
      upstream.destroy();
    };
    const onClose = (socket: net.Socket, other: net.Socket) => (): void => {
      // A socket closes cleanly only after it has both read to the end and finished
      // writing; anything else (a local destroy, a reset) must not leave the other leg open.
      if (!other.destroyed && !(socket.readableEnded && socket.writableFinished)) {
        fail(prematureClose());
      }
      if (++closed < 2) return;
      resolve({
        fromClient: socketBytes(upstream).written - upstreamAlreadyWritten,
        toClient: socketBytes(client).written - clientAlreadyWritten,
        ...(firstError !== undefined && { error: firstError }),
      });
    };
    client.on('error', fail);
    upstream.on('error', fail);
    client.once('close', onClose(client, upstream));
    upstream.once('close', onClose(upstream, client));
    forward(client, upstream);
    forward(upstream, client);
  });
}

/** One direction of the relay: through one reused read buffer where Node allows it, else `pipe`. */
function forward(from: net.Socket, to: net.Socket): void {
  if (!pumpThroughOwnBuffer(from, to)) from.pipe(to);
}

/** Bytes per read when the relay reads into its own buffer: what Node reads at a time anyway. */
const READ_BUFFER_BYTES = 64 * 1024;

/**
 * Read buffers of relays that ended, for the next ones. A new 64 KiB buffer per direction
 * per flow is 128 KiB of external memory for every short connection, and V8 answers
 * external memory with full collections: in the close-mode profile of coproxy-tls, 12% of
 * its CPU went to GC. A buffer comes back only once nothing can touch it any more: its
 * socket closed (no read into it) and every write that held a slice of it called back.
 * Bounded: a burst of connections leaves at most this many behind (8 MiB).
 */
const spareBuffers: Buffer[] = [];
const SPARE_BUFFERS = 128;

function takeBuffer(): Buffer {
  return spareBuffers.pop() ?? Buffer.allocUnsafe(READ_BUFFER_BYTES);
}

function giveBack(buffer: Buffer): void {
  if (spareBuffers.length < SPARE_BUFFERS) spareBuffers.push(buffer);
}

interface StreamHandle {
  reading: boolean;
  readStart(): number;
  useUserBuffer(buffer: Uint8Array): void;
}

/**
 * Node can read a socket into a buffer the caller owns, with no allocation per read: the
 * documented `onread: { buffer, callback }` option. It is only an option of a socket
 * being created, and a relay gets sockets that exist (accepted by a backend, opened by
 * `connectOnward()`). The option's two fields are found by their names on a probe socket
 * and set on the existing socket, the way its constructor sets them. Measured on a
 * loopback relay of 1 GiB: 20–30% less CPU per byte than `pipe`, which allocates a
 * 64 KiB buffer per read and leaves it to the garbage collector.
 *
 * A socket that is not a plain TCP socket (TLS), has bytes already buffered, or has
 * another 'data' listener is relayed with `pipe`, as are all sockets on a Node whose
 * internals do not match (`undefined` here).
 */
const onreadFields = ((): { readonly buffer: symbol; readonly callback: symbol } | undefined => {
  // `onread` is read by the constructor too, though @types/node lists it for connect() only.
  const options = { onread: { buffer: Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts;
  const probe = new net.Socket(options);
  const named = new Map(Object.getOwnPropertySymbols(probe).map((symbol) => [symbol.description, symbol]));
  probe.destroy();
  const buffer = named.get('kBuffer');
  const callback = named.get('kBufferCb');
  return buffer !== undefined && callback !== undefined ? { buffer, callback } : undefined;
})();

function pumpThroughOwnBuffer(from: net.Socket, to: net.Socket): boolean {
  const handle = (from as net.Socket & { _handle?: Partial<StreamHandle> | null })._handle;
  if (
    onreadFields === undefined ||
    handle === undefined ||
    handle === null ||
    typeof handle.useUserBuffer !== 'function' ||
    typeof handle.readStart !== 'function' ||
    (from as net.Socket & { encrypted?: boolean }).encrypted === true ||
    from.readableLength > 0 ||
    from.listenerCount('data') > 0
  ) {
    return false;
  }
  if (from.readableEnded) {
    // Its FIN came before the relay (a peer that sent everything at once): pass it on now,
    // as `pipe` does for a source that has already ended.
    to.end();
    return true;
  }
  const native = handle as StreamHandle;
  const buffer = takeBuffer();
  let stopped = false;
  let unfinishedWrites = 0;
  let sourceClosed = false;
  let givenBack = false;
  const maybeGiveBack = (): void => {
    if (givenBack || !sourceClosed || unfinishedWrites > 0) return;
    givenBack = true;
    giveBack(buffer);
  };
  // From here the relay decides when the socket is read. A `resume()` from elsewhere
  // (a drain handler left from before the relay, say) would restart reading while a
  // write still holds the buffer, and the next read would overwrite bytes not yet sent:
  // every path to reading goes through the handle's `readStart`, which waits for the relay.
  const readStart = native.readStart.bind(native);
  native.readStart = (): number => (stopped ? 0 : readStart());
  // The buffer is read into again as soon as the callback returns true: only when the
  // write has left it entirely (the socket took it at once). A write still queued holds
  // the buffer's bytes, so reading stops until every write is done: a callback may be
  // that of an earlier write, whose completion says nothing of the one holding the buffer.
  const afterWrite = (): void => {
    --unfinishedWrites;
    maybeGiveBack();
    if (unfinishedWrites > 0 || !stopped) return;
    stopped = false;
    if (from.destroyed) return;
    native.reading = true;
    readStart();
  };
  const send = (chunk: Buffer): boolean => {
    unfinishedWrites++;
    to.write(chunk, afterWrite);
    if (to.writableLength === 0) return true;
    stopped = true;
    return false;
  };
  const fields = from as unknown as Record<symbol, unknown>;
  fields[onreadFields.callback] = (length: number): boolean => {
    if (!send(buffer.subarray(0, length))) return false;
    // A full read means more is waiting: that part goes through the kernel, where it can.
    if (length < buffer.length) return true;
    const burst = spliceBurst(from, to);
    if (burst?.failed !== undefined) {
      (burst.failed.side === 'source' ? from : to).destroy(burst.failed.error);
      return false;
    }
    return burst?.rest === undefined || send(burst.rest);
  };
  fields[onreadFields.buffer] = buffer;
  native.useUserBuffer(buffer);
  // The end of the stream still comes through the stream: a FIN ends only the other side's writing.
  from.once('end', () => to.end());
  from.once('close', () => {
    sourceClosed = true;
    maybeGiveBack();
  });
  from.resume();
  return true;
}

function prematureClose(): Error {
  return Object.assign(new Error('one leg of the relay closed prematurely'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
}
