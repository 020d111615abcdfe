import { describe, expect, it } from 'vitest';
import { H2C_LIMITS } from './h2c-session.js';
import { startProxy, until } from './test-support/harness.js';
import { FLAG, FRAME, type H2cOrigin, frame, frameReader, getBlock, h2Client, indexedLiteral, rawH2, startH2cOrigin } from './test-support/h2.js';

// HTTP/2's own attacks on the h2c side, each against a bound the README names. Every test
// ends by serving a request on a fresh connection: the proxy goes on serving everyone else.
const ENHANCE_YOUR_CALM = 0xb;
const INTERNAL_ERROR = 0x2;
const REFUSED_STREAM = 0x7;

const goawayCode = (reader: ReturnType<typeof frameReader>): number | undefined => {
  const goaway = reader.frames.find((f) => f.type === FRAME.GOAWAY);
  return goaway?.payload.readUInt32BE(4);
};

const CHECK_PATH = '/after-the-attack';
/** An origin handler that never answers, except the check that the proxy still serves. */
const holdAllButCheck = (_stream: unknown, headers: { readonly ':path'?: string | undefined }): boolean => headers[':path'] !== CHECK_PATH;

async function stillServes(registry: string, port: number, origin: H2cOrigin): Promise<void> {
  await using client = await h2Client(registry, port);
  const before = origin.requests.length;
  const answer = await client.request({ ':path': CHECK_PATH });
  expect(answer.status).toBe(200);
  expect(origin.requests.length).toBe(before + 1);
}

describe('h2c attack bounds', () => {
  it(`rapid reset (CVE-2023-44487): more than ${H2C_LIMITS.maxResetsPerSecond} streams reset within a second get GOAWAY ENHANCE_YOUR_CALM and the close`, async () => {
    // An origin that never answers: each stream that reaches it stays open until reset.
    await using origin = await startH2cOrigin(holdAllButCheck);
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    const frames: Buffer[] = [frame(FRAME.SETTINGS, FLAG.ACK, 0)];
    const cancel = Buffer.alloc(4);
    cancel.writeUInt32BE(0x8);
    for (let i = 0; i < 1000; i++) {
      const id = 1 + 2 * i;
      frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, id, getBlock('ok.test')), frame(FRAME.RST_STREAM, 0, id, cancel));
    }
    socket.write(Buffer.concat(frames));
    await until(() => reader.closed, 10_000, 'the proxy to close the connection');
    // Node 20 leaves the count to the proxy (GOAWAY ENHANCE_YOUR_CALM, COPROXY_HTTP_H2_FLOOD); on Node 22 the
    // session ends inside nghttp2's callback instead (GOAWAY INTERNAL_ERROR, ERR_HTTP2_ERROR). Either way the
    // connection is closed, and the bound below is what matters.
    expect([ENHANCE_YOUR_CALM, INTERNAL_ERROR]).toContain(goawayCode(reader));
    await until(() => under.events.some((e) => e.type === 'client-error' && ['COPROXY_HTTP_H2_FLOOD', 'ERR_HTTP2_ERROR'].includes(e.code)), 5000, 'the flood event');
    // Far fewer than the 1000 streams reached the origin.
    expect(origin.streams).toBeLessThanOrEqual(H2C_LIMITS.maxResetsPerSecond + 1);
    await stillServes(under.registry, origin.port, origin);
  });

  it('a CONTINUATION flood (a header block that never ends) closes the connection; nothing reaches the origin', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    const frames: Buffer[] = [frame(FRAME.SETTINGS, FLAG.ACK, 0), frame(FRAME.HEADERS, FLAG.END_STREAM, 1, getBlock('ok.test'))];
    // 10 000 CONTINUATION frames without END_HEADERS, each adding a header: 1 MiB of headers in all.
    for (let i = 0; i < 10_000; i++) frames.push(frame(FRAME.CONTINUATION, 0, 1, Buffer.from([0x00, 0x02, 0x78, 0x78, 0x64, ...Buffer.alloc(100, 0x61)])));
    socket.write(Buffer.concat(frames).subarray(0, 200_000));
    socket.write(Buffer.concat(frames).subarray(200_000));
    await until(() => reader.closed, 10_000, 'the proxy to close the connection');
    expect(reader.frames.some((f) => f.type === FRAME.GOAWAY)).toBe(true);
    expect(origin.streams).toBe(0);
    await stillServes(under.registry, origin.port, origin);
  });

  it('an HPACK size bomb (one 4000-byte entry referenced 1000 times) is reset past maxHeaderSize; the origin sees nothing', async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    // Index 62 is the first dynamic-table entry (RFC 7541 §2.3.3): 1 byte that decodes to 4 KB.
    const block = Buffer.concat([getBlock('ok.test'), indexedLiteral('x-bomb', 'b'.repeat(4000)), Buffer.alloc(1000, 0x80 | 62)]);
    socket.write(Buffer.concat([frame(FRAME.SETTINGS, FLAG.ACK, 0), frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1, block)]));
    await until(() => reader.closed || reader.frames.some((f) => (f.type === FRAME.RST_STREAM && f.stream === 1) || f.type === FRAME.GOAWAY), 10_000, 'the stream refused');
    expect(reader.frames.some((f) => f.type === FRAME.HEADERS && f.stream === 1)).toBe(false);
    expect(origin.streams).toBe(0);
    socket.destroy();
    await stillServes(under.registry, origin.port, origin);
  });

  it(`a SETTINGS and PING flood (more than ${H2C_LIMITS.maxControlFramesPerSecond} a second) gets GOAWAY ENHANCE_YOUR_CALM and the close`, async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    const frames: Buffer[] = [frame(FRAME.SETTINGS, FLAG.ACK, 0)];
    for (let i = 0; i < 1000; i++) frames.push(frame(FRAME.SETTINGS, 0, 0), frame(FRAME.PING, 0, 0, Buffer.alloc(8, i % 256)));
    socket.write(Buffer.concat(frames));
    await until(() => reader.closed, 10_000, 'the proxy to close the connection');
    expect(goawayCode(reader)).toBe(ENHANCE_YOUR_CALM);
    // Not every frame of the flood was answered.
    expect(reader.frames.filter((f) => f.type === FRAME.PING).length).toBeLessThan(1000);
    await stillServes(under.registry, origin.port, origin);
  });

  it(`a WINDOW_UPDATE flood (more than ${H2C_LIMITS.windowUpdatesBase} with nothing sent to earn them) gets GOAWAY ENHANCE_YOUR_CALM and the close`, async () => {
    await using origin = await startH2cOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    const increment = Buffer.alloc(4);
    increment.writeUInt32BE(1);
    // Nothing but credit for data never asked for: each frame is valid, none is answered, and Node reports none.
    const frames: Buffer[] = [frame(FRAME.SETTINGS, FLAG.ACK, 0)];
    for (let i = 0; i < 5000; i++) frames.push(frame(FRAME.WINDOW_UPDATE, 0, 0, increment));
    socket.write(Buffer.concat(frames));
    await until(() => reader.closed, 10_000, 'the proxy to close the connection');
    expect(goawayCode(reader)).toBe(ENHANCE_YOUR_CALM);
    await until(() => under.events.some((e) => e.type === 'client-error' && e.code === 'COPROXY_HTTP_H2_FLOOD'), 5000, 'the flood event');
    await stillServes(under.registry, origin.port, origin);
  });

  it('a client that downloads 8 MiB in 64 KiB windows sends WINDOW_UPDATEs its DATA explains, and is not cut off', async () => {
    const body = Buffer.alloc(8 * 1024 * 1024, 0x61);
    await using origin = await startH2cOrigin((stream) => {
      stream.respond({ ':status': 200 });
      stream.end(body);
      return true;
    });
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    // Node's default 64 KiB windows: the client gives credit back every 32 KiB, on the stream and the connection, some 500 WINDOW_UPDATEs in all.
    const answer = await client.request({ ':path': '/large' });
    expect(answer.status).toBe(200);
    expect(answer.body.length).toBe(body.length);
    expect(under.events.filter((e) => e.type === 'client-error')).toEqual([]);
  });

  it(`streams past SETTINGS_MAX_CONCURRENT_STREAMS (${H2C_LIMITS.maxConcurrentStreams}) are refused; the open ones are served`, async () => {
    // The origin holds each stream open until the test lets go.
    const held: (() => void)[] = [];
    await using origin = await startH2cOrigin((stream, headers) => {
      if (headers[':path'] === CHECK_PATH) return false;
      held.push(() => {
        if (!stream.destroyed) stream.respond({ ':status': 200 }, { endStream: true });
      });
      return true;
    });
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    // Before the client acknowledges the proxy's SETTINGS, nghttp2 refuses the streams past the bound one by one.
    const frames: Buffer[] = [];
    for (let i = 0; i < 150; i++) frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1 + 2 * i, getBlock('ok.test')));
    socket.write(Buffer.concat(frames));
    await until(() => reader.frames.filter((f) => f.type === FRAME.RST_STREAM && f.payload.readUInt32BE(0) === REFUSED_STREAM).length === 50, 10_000, '50 refused streams');
    await until(() => origin.streams === H2C_LIMITS.maxConcurrentStreams, 10_000, 'the admitted streams at the origin');
    for (const release of held) release();
    await until(() => reader.frames.filter((f) => f.type === FRAME.HEADERS).length === H2C_LIMITS.maxConcurrentStreams, 10_000, 'the admitted streams answered');
    expect(origin.streams).toBe(H2C_LIMITS.maxConcurrentStreams);
    socket.destroy();
    await stillServes(under.registry, origin.port, origin);
  });

  it('once the bound is acknowledged, a client that opens streams past it has its connection closed', async () => {
    await using origin = await startH2cOrigin(holdAllButCheck);
    await using under = await startProxy([origin.port]);
    const socket = await rawH2(under.registry, origin.port);
    const reader = frameReader(socket);
    await until(() => reader.frames.some((f) => f.type === FRAME.SETTINGS && (f.flags & FLAG.ACK) === 0), 5000, "the proxy's SETTINGS");
    socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
    const frames: Buffer[] = [];
    for (let i = 0; i < 150; i++) frames.push(frame(FRAME.HEADERS, FLAG.END_HEADERS | FLAG.END_STREAM, 1 + 2 * i, getBlock('ok.test')));
    socket.write(Buffer.concat(frames));
    await until(() => reader.closed, 10_000, 'the proxy to close the connection');
    expect(origin.streams).toBeLessThanOrEqual(H2C_LIMITS.maxConcurrentStreams);
    await stillServes(under.registry, origin.port, origin);
  });
});
