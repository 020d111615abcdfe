// HTTP/2 test aids for proxy-http's h2c tests: an h2c origin, a client through core's
// redirect layer, and raw frames for the attack tests (test code only: the proxy itself
// leaves framing and HPACK to node:http2). Not part of the build.
import http2 from 'node:http2';
import type net from 'node:net';
import { dial, within } from './harness.js';

export interface H2Request {
  readonly headers: http2.IncomingHttpHeaders;
  readonly body: Buffer;
}

export interface H2cOrigin extends AsyncDisposable {
  readonly port: number;
  /** Every request the origin received, in order. */
  readonly requests: H2Request[];
  /** Sessions (connections) the origin accepted. */
  readonly sessions: http2.ServerHttp2Session[];
  /** Streams opened on the origin, counted as they arrive. */
  streams: number;
}

/**
 * An h2c origin on 127.0.0.1 that answers each request with its pseudo-headers, headers
 * and body length as JSON (`handler` may answer instead).
 */
export async function startH2cOrigin(handler?: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean): Promise<H2cOrigin> {
  const server = http2.createServer();
  const origin = { port: 0, requests: [] as H2Request[], sessions: [] as http2.ServerHttp2Session[], streams: 0 };
  server.on('session', (session) => origin.sessions.push(session));
  server.on('stream', (stream, headers) => {
    origin.streams++;
    stream.on('error', () => undefined);
    if (handler?.(stream, headers) === true) return;
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('end', () => {
      const body = Buffer.concat(chunks);
      origin.requests.push({ headers, body });
      if (stream.destroyed) return;
      stream.respond({ ':status': 200, 'content-type': 'application/json', 'x-origin': 'h2c' });
      stream.end(JSON.stringify({ headers, bodyBytes: body.length }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin.port = (server.address() as net.AddressInfo).port;
  return Object.assign(origin, {
    async [Symbol.asyncDispose]() {
      for (const session of origin.sessions) session.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

export interface H2Client extends AsyncDisposable {
  readonly session: http2.ClientHttp2Session;
  request(headers: http2.OutgoingHttpHeaders, body?: Buffer | string): Promise<H2Response>;
}

export interface H2Response {
  readonly status: number;
  readonly headers: http2.IncomingHttpHeaders;
  readonly body: Buffer;
}

/** An HTTP/2 prior-knowledge client whose connection goes through core's redirect layer. */
export async function h2Client(registry: string, port: number): Promise<H2Client> {
  const socket = await dial(registry, port);
  // core's flow header is written through the socket's stream; Node's HTTP/2 writes to the handle beneath it.
  await new Promise<void>((resolve) => socket.write('', () => resolve()));
  const session = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => socket });
  session.on('error', () => undefined);
  return {
    session,
    request(headers, body) {
      const stream = session.request({ ':path': '/', ':authority': `127.0.0.1:${port}`, ...headers }, { endStream: body === undefined });
      const done = new Promise<H2Response>((resolve, reject) => {
        const chunks: Buffer[] = [];
        let head: http2.IncomingHttpHeaders = {};
        stream.on('response', (h) => (head = h));
        stream.on('data', (chunk: Buffer) => chunks.push(chunk));
        stream.once('end', () => resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks) }));
        stream.once('error', reject);
        stream.once('close', () => {
          if (head[':status'] === undefined) reject(new Error(`stream closed without a response (${stream.rstCode})`));
        });
      });
      if (body !== undefined) stream.end(body);
      return within(done, 10_000, `${String(headers[':method'] ?? 'GET')} ${String(headers[':path'] ?? '/')}`);
    },
    [Symbol.asyncDispose]() {
      session.destroy();
      socket.destroy();
      return Promise.resolve();
    },
  };
}

// Raw frames (RFC 9113 §4.1), for the attack tests.
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 } as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream & 0x7fffffff, 5);
  return Buffer.concat([header, payload]);
}

/** An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), `first` holding the pattern bits. */
function hpackInt(first: number, n: number, value: number): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return out;
}

/** A literal string without Huffman coding (RFC 7541 §5.2). */
function hpackString(text: string): Buffer {
  const bytes = Buffer.from(text, 'latin1');
  return Buffer.concat([Buffer.from(hpackInt(0, 7, bytes.length)), bytes]);
}

/** A header block of a GET for `/` on `authority`, from the static table and literals (RFC 7541 Appendix A). */
export function getBlock(authority: string, path = '/'): Buffer {
  return Buffer.concat([
    Buffer.from([0x82, 0x86]), // :method GET, :scheme http
    path === '/' ? Buffer.from([0x84]) : Buffer.concat([Buffer.from([0x04]), hpackString(path)]), // :path
    Buffer.from([0x01]), // :authority, literal without indexing, indexed name
    hpackString(authority),
  ]);
}

/** A literal header field with incremental indexing and a new name: it enters the dynamic table. */
export function indexedLiteral(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x40]), hpackString(name), hpackString(value)]);
}

/** A raw h2c connection through core's redirect layer: the preface and an empty SETTINGS sent. */
export async function rawH2(registry: string, port: number): Promise<net.Socket> {
  const socket = await dial(registry, port);
  socket.on('error', () => undefined);
  socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
  return socket;
}

/** Frames the peer sent, parsed as they arrive; `closed` once the connection ends. */
export function frameReader(socket: net.Socket): { readonly frames: { type: number; flags: number; stream: number; payload: Buffer }[]; closed: boolean } {
  const state = { frames: [] as { type: number; flags: number; stream: number; payload: Buffer }[], closed: false };
  let buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 9) {
      const length = buffer.readUIntBE(0, 3);
      if (buffer.length < 9 + length) break;
      state.frames.push({ type: buffer[3]!, flags: buffer[4]!, stream: buffer.readUInt32BE(5) & 0x7fffffff, payload: buffer.subarray(9, 9 + length) });
      buffer = buffer.subarray(9 + length);
    }
  });
  socket.once('close', () => (state.closed = true));
  return state;
}
