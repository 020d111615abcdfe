import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createParser, isParserError, isPause } from './node-http-parser.js';
import { ChunkSizeGuard } from './request-framing.js';
import { classify } from './sniff.js';

/** A chunked body as a client could send it: sizes in either case, with leading zeros, extensions, trailers. */
const chunkedBody = fc
  .record({
    chunks: fc.array(
      fc.record({
        size: fc.integer({ min: 1, max: 300 }),
        zeros: fc.nat({ max: 3 }),
        upper: fc.boolean(),
        extension: fc.constantFrom('', ';a=b', ';name="quoted;\\"value"', ';x'),
      }),
      { maxLength: 8 },
    ),
    trailer: fc.constantFrom('', 'X-Trailer: 1\r\n'),
  })
  .map(({ chunks, trailer }) => {
    let wire = '';
    for (const { size, zeros, upper, extension } of chunks) {
      const hex = '0'.repeat(zeros) + (upper ? size.toString(16).toUpperCase() : size.toString(16));
      wire += `${hex}${extension}\r\n${'d'.repeat(size)}\r\n`;
    }
    wire += `0\r\n${trailer}\r\n`;
    return { wire: Buffer.from(wire, 'latin1'), sizes: chunks.map((c) => c.size) };
  });

/** Splits `data` at the given points (taken modulo its length). */
function split(data: Buffer, points: readonly number[]): Buffer[] {
  const cuts = [...new Set(points.map((p) => p % (data.length + 1)))].sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let from = 0;
  for (const cut of [...cuts, data.length]) {
    if (cut > from) parts.push(data.subarray(from, cut));
    from = cut;
  }
  return parts;
}

describe('the chunk-size guard', () => {
  it('refuses exactly the bodies whose declared sizes pass the bound, however the bytes are split', () => {
    fc.assert(
      fc.property(chunkedBody, fc.integer({ min: 0, max: 1200 }), fc.array(fc.nat(), { maxLength: 12 }), ({ wire, sizes }, bound, points) => {
        const guard = new ChunkSizeGuard(bound);
        const accepted = split(wire, points).every((part) => guard.scan(part));
        expect(accepted).toBe(sizes.reduce((a, b) => a + b, 0) <= bound);
      }),
      { numRuns: 500, seed: 20261202 },
    );
  });

  it('starts where Node’s parser pauses after a chunked head, and stays in step with it over pipelined requests', () => {
    fc.assert(
      fc.property(fc.array(chunkedBody, { minLength: 1, maxLength: 4 }), fc.array(fc.nat(), { maxLength: 12 }), (bodies, points) => {
        const wire = Buffer.concat(
          bodies.map(({ wire: body }, i) => Buffer.concat([Buffer.from(`POST /${i} HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n`), body])),
        );
        let guard: ChunkSizeGuard | undefined;
        const bodyBytes: number[] = [];
        let completed = 0;
        const parser = createParser('request', 16_384, {
          onHead: () => {
            guard = new ChunkSizeGuard(Number.MAX_SAFE_INTEGER);
            bodyBytes.push(0);
            return 'pause';
          },
          onBody: (chunk) => (bodyBytes[bodyBytes.length - 1]! += chunk.length),
          onComplete: () => completed++,
        });
        for (let data of split(wire, points)) {
          for (;;) {
            if (guard !== undefined) expect(guard.scan(data)).toBe(true);
            const consumed = parser.execute(data);
            if (isPause(consumed)) {
              parser.resume();
              data = data.subarray(consumed.bytesParsed);
              continue;
            }
            expect(isParserError(consumed)).toBe(false);
            break;
          }
        }
        expect(completed).toBe(bodies.length);
        expect(bodyBytes).toEqual(bodies.map(({ sizes }) => sizes.reduce((a, b) => a + b, 0)));
      }),
      { numRuns: 300, seed: 20261202 },
    );
  });
});

describe('sorting the first bytes', () => {
  it.each([
    ['GET / HTTP/1.1', 'http'],
    ['M-SEARCH * HTTP/1.1', 'http'],
    ['G', 'http'],
    ['\r\nGET', 'http'],
    ['\n', 'http'],
    ["~!#$%&'*+-.^_`|", 'http'],
    [' GET', 'http'],
    ['\tGET', 'http'],
    ['\u000bGET', 'http'],
    ['\u000cGET', 'http'],
  ])('takes %j for HTTP', (start, expected) => {
    expect(classify(Buffer.from(start, 'latin1'))).toBe(expected);
  });

  it.each([
    [[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 'tls'],
    [[0x16, 0x03, 0x03, 0x40, 0x00, 0x01], 'tls'],
    [[0x16], 'undecided'],
    [[0x16, 0x03, 0x01, 0x02, 0x00], 'undecided'],
    [[0x16, 0x03, 0x05], 'unrecognised'],
    [[0x16, 0x02], 'unrecognised'],
    [[0x16, 0x03, 0x01, 0x40, 0x01], 'unrecognised'],
    [[0x16, 0x03, 0x01, 0x00, 0x00], 'unrecognised'],
    [[0x16, 0x03, 0x01, 0x02, 0x00, 0x02], 'unrecognised'],
    [[0x00], 'unrecognised'],
    [[0x80], 'unrecognised'],
    [[0x3a], 'unrecognised'],
    [[0x22], 'unrecognised'],
    [[0x7f], 'unrecognised'],
    [[0x0e], 'unrecognised'],
  ])('sorts %j as %s', (bytes, expected) => {
    expect(classify(Buffer.from(bytes))).toBe(expected);
  });
});
