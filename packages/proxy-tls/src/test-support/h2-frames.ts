import type { Duplex } from 'node:stream';

/**
 * Just enough HTTP/2 framing (RFC 9113 §4.1) and HPACK (RFC 7541) for an attacker in a
 * test to write what no well-behaved client library would: floods, resets, header bombs.
 * Test code only; the product uses node:http2.
 */

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FrameType = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const;
export const Flag = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
export const ErrorCode = { NO_ERROR: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2, REFUSED_STREAM: 7, CANCEL: 8, COMPRESSION_ERROR: 9, ENHANCE_YOUR_CALM: 11 } as const;

export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

export const settings = (): Buffer => frame(FrameType.SETTINGS, 0, 0);
export const settingsAck = (): Buffer => frame(FrameType.SETTINGS, Flag.ACK, 0);
export const ping = (n: number): Buffer => {
  const payload = Buffer.alloc(8);
  payload.writeUInt32BE(n, 4);
  return frame(FrameType.PING, 0, 0, payload);
};
export const windowUpdate = (streamId: number, increment: number): Buffer => {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(increment);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, payload);
};
export const rstStream = (streamId: number, code: number): Buffer => {
  const payload = Buffer.alloc(4);
  payload.writeUInt32BE(code);
  return frame(FrameType.RST_STREAM, 0, streamId, payload);
};

/** An HPACK integer with an `n`-bit prefix, `first` holding the representation's leading bits. */
function integer(value: number, n: number, first: number): Buffer {
  const max = (1 << n) - 1;
  if (value < max) return Buffer.from([first | value]);
  const bytes = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    bytes.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

const string = (text: string): Buffer => Buffer.concat([integer(Buffer.byteLength(text), 7, 0), Buffer.from(text)]);

export const hpack = {
  /** An entry of the static or dynamic table (§6.1). */
  indexed: (index: number): Buffer => integer(index, 7, 0x80),
  /** A literal without indexing, its name from the static table (§6.2.2). */
  literalIndexedName: (nameIndex: number, value: string): Buffer => Buffer.concat([integer(nameIndex, 4, 0), string(value)]),
  /** A literal without indexing, new name. */
  literal: (name: string, value: string): Buffer => Buffer.concat([Buffer.from([0]), string(name), string(value)]),
  /** A literal added to the dynamic table (§6.2.1), new name: it becomes index 62. */
  literalIndexed: (name: string, value: string): Buffer => Buffer.concat([Buffer.from([0x40]), string(name), string(value)]),
  /** GET https://authority/path: static :method GET (2), :scheme https (7), :path (4) and :authority (1) literals. */
  request: (authority: string, path: string): Buffer =>
    Buffer.concat([hpack.indexed(2), hpack.indexed(7), hpack.literalIndexedName(4, path), hpack.literalIndexedName(1, authority)]),
};

export const headers = (streamId: number, block: Buffer, flags: number = Flag.END_HEADERS | Flag.END_STREAM): Buffer => frame(FrameType.HEADERS, flags, streamId, block);

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Buffer;
}

/** Collects every frame the peer sends on `socket` (after nothing: a server sends no preface of bytes but its SETTINGS). */
export class FrameReader {
  readonly frames: Frame[] = [];
  private buffer = Buffer.alloc(0);
  closed = false;

  constructor(socket: Duplex) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 9) {
        const length = this.buffer.readUIntBE(0, 3);
        if (this.buffer.length < 9 + length) break;
        this.frames.push({ type: this.buffer[3]!, flags: this.buffer[4]!, streamId: this.buffer.readUInt32BE(5) & 0x7fffffff, payload: this.buffer.subarray(9, 9 + length) });
        this.buffer = this.buffer.subarray(9 + length);
      }
    });
    socket.on('error', () => undefined); // a peer that resets us is what some tests expect
    socket.once('close', () => (this.closed = true));
  }

  of(type: number): Frame[] {
    return this.frames.filter((f) => f.type === type);
  }

  /** The error code of the GOAWAY the peer sent, if it sent one. */
  get goawayCode(): number | undefined {
    const goaway = this.of(FrameType.GOAWAY)[0];
    return goaway?.payload.readUInt32BE(4);
  }

  /** Every GOAWAY's error code, in order. */
  goawayCodes(): number[] {
    return this.of(FrameType.GOAWAY).map((f) => f.payload.readUInt32BE(4));
  }

  /** RST_STREAM frames the peer sent, with their error codes. */
  resets(): { streamId: number; code: number }[] {
    return this.of(FrameType.RST_STREAM).map((f) => ({ streamId: f.streamId, code: f.payload.readUInt32BE(0) }));
  }

  /** Stream ids the peer answered with a HEADERS frame. */
  answered(): number[] {
    return this.of(FrameType.HEADERS).map((f) => f.streamId);
  }
}
