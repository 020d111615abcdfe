import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { H2FrameMeter, H2FrameScanner } from './h2-frame-meter.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

function frame(type: number, payloadLength: number, stream = 0): Buffer {
  const out = Buffer.alloc(9 + payloadLength, 0x08); // payload bytes that look like frame types, to catch a scan out of step
  out.writeUIntBE(payloadLength, 0, 3);
  out[3] = type;
  out[4] = 0;
  out.writeUInt32BE(stream, 5);
  return out;
}

/** `bytes` fed to `scan` cut at `cuts`. */
function feed(scanner: H2FrameScanner, bytes: Buffer, cuts: number[]): void {
  let from = 0;
  for (const cut of [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)) {
    scanner.scan(bytes.subarray(from, cut));
    from = cut;
  }
  scanner.scan(bytes.subarray(from));
}

describe('H2FrameScanner', () => {
  it('reports each frame’s type after the preface, however the bytes are cut', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ type: fc.integer({ min: 0, max: 255 }), length: fc.integer({ min: 0, max: 40 }) }), { maxLength: 30 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (frames, cuts) => {
          const seen: number[] = [];
          const scanner = new H2FrameScanner(PREFACE.length, (type) => seen.push(type));
          feed(scanner, Buffer.concat([PREFACE, ...frames.map((f) => frame(f.type, f.length))]), cuts);
          expect(seen).toEqual(frames.map((f) => f.type));
        },
      ),
    );
  });
});

describe('H2FrameMeter', () => {
  it('allows WINDOW_UPDATEs up to base + per stream + per DATA frame sent, and calls back once past it, on the next tick', async () => {
    const exceeded = vi.fn();
    const meter = new H2FrameMeter({ windowUpdatesBase: 5, windowUpdatesPerStream: 2, windowUpdatesPerDataFrame: 3 }, exceeded, 0);
    meter.inbound.scan(Buffer.concat([frame(1, 10, 1), frame(1, 10, 3)])); // two streams: 5 + 4 = 9
    meter.outbound.scan(Buffer.concat([frame(0, 100, 1), frame(4, 0)])); // one DATA frame sent: + 3 = 12
    meter.inbound.scan(Buffer.concat(Array.from({ length: 12 }, () => frame(8, 4))));
    expect(exceeded).not.toHaveBeenCalled();
    meter.inbound.scan(frame(8, 4));
    expect(exceeded).not.toHaveBeenCalled();
    await new Promise((resolve) => process.nextTick(resolve));
    expect(exceeded).toHaveBeenCalledTimes(1);
    expect(exceeded.mock.calls[0]![0]).toMatch(/13 WINDOW_UPDATE frames for 1 DATA frames sent and 2 streams \(allowed: 12\)/);
    meter.inbound.scan(Buffer.concat(Array.from({ length: 50 }, () => frame(8, 4))));
    await new Promise((resolve) => process.nextTick(resolve));
    expect(exceeded).toHaveBeenCalledTimes(1);
  });
});
