import { Duplex } from 'node:stream';

/**
 * Counts the HTTP/2 frames node:http2 neither reports nor bounds, on the bytes going into
 * and out of a server session, and ends the session when a peer sends more of them than
 * its traffic can explain. Node's HTTP/2 (nghttp2) has no event for a WINDOW_UPDATE and no
 * option that bounds them: a peer that sends nothing else keeps its connection busy (and
 * past any idle timeout) for ever, at the cost of 13 bytes a frame. Both reference vendors
 * use it.
 *
 * Only the 9-byte frame header (RFC 9113 §4.1: 24-bit length, type, flags, stream) is read,
 * and the payload it announces is skipped: nghttp2 stays the one parser of the protocol
 * (framing errors, HPACK, flow control are its). The scan cannot fall out of step with
 * it on a valid connection, as every frame says its own length; on an invalid one nghttp2
 * ends the session itself, whatever the count says.
 *
 * The bound, after Envoy's `max_inbound_window_update_frames_per_data_frame_sent`: a
 * WINDOW_UPDATE gives back credit for DATA the peer received, so an honest peer sends a few
 * per DATA frame it was sent, and one or two per stream. Over
 * `base + perStream × streams + perDataFrame × DATA frames sent` the session is ended. The
 * allowance only grows with work the peer made the proxy do (a stream, a DATA frame), so a
 * flood costs at most a fixed multiple of that work.
 */
export interface H2FrameBounds {
  /** WINDOW_UPDATE frames any connection may send, whatever else it did. */
  readonly windowUpdatesBase: number;
  /** More per stream the peer opened (a HEADERS frame it sent). */
  readonly windowUpdatesPerStream: number;
  /** More per DATA frame the session sent the peer. */
  readonly windowUpdatesPerDataFrame: number;
}

/** What the kit's vendors use: far above what curl, nghttp2, Chromium, Go or Node send. */
export const H2_FRAME_BOUNDS: H2FrameBounds = { windowUpdatesBase: 100, windowUpdatesPerStream: 2, windowUpdatesPerDataFrame: 10 };

/** RFC 9113 §6 frame types counted here. */
const DATA = 0x0;
const HEADERS = 0x1;
const WINDOW_UPDATE = 0x8;

/** The client connection preface (RFC 9113 §3.4) that starts what a server reads: no frame. */
export const H2_CLIENT_PREFACE_LENGTH = 24;

/** Reads frame headers out of a byte stream cut anywhere, calling `onFrame` with each frame's type. */
export class H2FrameScanner {
  /** Payload (or preface) bytes still to pass over before the next frame header. */
  private skip: number;
  private readonly header = Buffer.alloc(9);
  /** Bytes of a frame header split across chunks, collected so far. */
  private have = 0;

  constructor(
    skipFirst: number,
    private readonly onFrame: (type: number) => void,
  ) {
    this.skip = skipFirst;
  }

  scan(chunk: Uint8Array): void {
    let at = 0;
    const end = chunk.length;
    while (at < end) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, end - at);
        this.skip -= n;
        at += n;
        continue;
      }
      let header: Uint8Array;
      let base: number;
      if (this.have === 0 && end - at >= 9) {
        header = chunk;
        base = at;
        at += 9;
      } else {
        const n = Math.min(9 - this.have, end - at);
        this.header.set(chunk.subarray(at, at + n), this.have);
        this.have += n;
        at += n;
        if (this.have < 9) return;
        this.have = 0;
        header = this.header;
        base = 0;
      }
      this.skip = (header[base]! << 16) | (header[base + 1]! << 8) | header[base + 2]!;
      this.onFrame(header[base + 3]!);
    }
  }
}

/** The counts of one server session, and the check against `H2FrameBounds`. */
export class H2FrameMeter {
  private windowUpdates = 0;
  private streams = 0;
  private dataFramesSent = 0;
  private tripped = false;
  /** Scans what the peer sends (after its preface). */
  readonly inbound: H2FrameScanner;
  /** Scans what the session sends. */
  readonly outbound: H2FrameScanner;

  constructor(
    private readonly bounds: H2FrameBounds,
    /** Called once, when the peer's WINDOW_UPDATEs pass the bound; the caller ends the session. */
    private readonly onExceeded: (message: string) => void,
    inboundPreface: number = H2_CLIENT_PREFACE_LENGTH,
  ) {
    this.inbound = new H2FrameScanner(inboundPreface, (type) => this.received(type));
    this.outbound = new H2FrameScanner(0, (type) => {
      if (type === DATA) this.dataFramesSent++;
    });
  }

  private received(type: number): void {
    if (type === HEADERS) this.streams++;
    else if (type === WINDOW_UPDATE && ++this.windowUpdates > this.allowance() && !this.tripped) {
      this.tripped = true;
      // On the next tick: the scan may run inside the session's own read (or before the
      // session exists, for bytes read ahead of it), where ending it is not safe.
      process.nextTick(
        this.onExceeded,
        `the peer sent ${this.windowUpdates} WINDOW_UPDATE frames for ${this.dataFramesSent} DATA frames sent and ${this.streams} streams (allowed: ${this.allowance()})`,
      );
    }
  }

  private allowance(): number {
    const { windowUpdatesBase, windowUpdatesPerStream, windowUpdatesPerDataFrame } = this.bounds;
    return windowUpdatesBase + windowUpdatesPerStream * this.streams + windowUpdatesPerDataFrame * this.dataFramesSent;
  }
}

/**
 * The duplex a server session runs on instead of `socket`: what `socket` reads (after
 * `head`, bytes already read from it) and what the session writes go through `meter`.
 * node:http2 takes a JS stream as readily as a socket (it wraps it itself). The socket's
 * end ends the session's input; the session's end (a GOAWAY last) ends the socket, which
 * is cut `lingerMs` later if the peer does not read.
 */
export function meteredSocket(socket: Duplex, head: Buffer | undefined, meter: H2FrameMeter, lingerMs: number): Duplex {
  let unscanned = head;
  let waitingForDrain: ((error?: Error | null) => void) | undefined;
  const drained = (error?: Error): void => {
    const callback = waitingForDrain;
    waitingForDrain = undefined;
    callback?.(error ?? null);
  };
  const duplex = new Duplex({
    read() {
      // `head` is counted as the session reads it, not before: the session exists by then
      // for `onExceeded` to end.
      if (unscanned !== undefined) meter.inbound.scan(unscanned);
      unscanned = undefined;
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      meter.outbound.scan(chunk);
      // Done when the socket took it, not when it reached the wire: waiting for each write's
      // flush held the session to one TLS record at a time (8 MiB took ten times as long).
      if (socket.write(chunk)) return callback();
      waitingForDrain = callback;
    },
    // node:http2 writes a frame header and its payload as separate buffers in one batch: one
    // write of the batch makes one TLS record of it, not a 9-byte record and Nagle's wait.
    writev(chunks, callback) {
      socket.cork();
      let more = true;
      for (const { chunk } of chunks) {
        meter.outbound.scan(chunk as Buffer);
        more = socket.write(chunk);
      }
      socket.uncork();
      if (more) return callback();
      waitingForDrain = callback;
    },
    final(callback) {
      socket.end(() => callback());
    },
    destroy(error, callback) {
      if (!socket.destroyed) {
        socket.end();
        setTimeout(() => socket.destroy(), lingerMs).unref();
      }
      callback(error);
    },
  });
  if (head !== undefined && head.length > 0) duplex.push(head);
  socket.on('data', (chunk: Buffer) => {
    meter.inbound.scan(chunk);
    if (!duplex.push(chunk)) socket.pause();
  });
  socket.once('end', () => duplex.push(null));
  socket.on('drain', () => drained());
  socket.once('close', () => {
    drained(new Error('the socket closed'));
    duplex.destroy();
  });
  socket.on('error', () => undefined); // the close that follows ends the session
  return duplex;
}
