import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ClientHelloError } from './client-hello.js';
import { TlsErrorCode } from './errors.js';
import { QUIC_V1, QUIC_V2, QuicInitialError, QuicInitialReader, type QuicReadResult } from './quic-initial.js';
import { buildInitial, buildInitialDatagram, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

// The QUIC Initial reader reads untrusted datagrams from every redirected UDP flow: whatever
// arrives, it must answer "need more", a hello, or a typed error (QuicInitialError or
// ClientHelloError) with a COPROXY_TLS_ code. It is synchronous and every loop is bounded by
// the bytes given, so a hang would be this file timing out. Run counts are sized for CI on
// two cores.

const QUIC_CODES = new Set<string>([
  TlsErrorCode.QuicNotInitial,
  TlsErrorCode.QuicUnsupportedVersion,
  TlsErrorCode.QuicMalformed,
  TlsErrorCode.QuicDecryptFailed,
  TlsErrorCode.QuicTooLarge,
]);
const HELLO_CODES = new Set<string>([TlsErrorCode.NotClientHello, TlsErrorCode.Malformed, TlsErrorCode.TooLarge, TlsErrorCode.DuplicateExtension]);

type Outcome = { readonly kind: 'result'; readonly result: QuicReadResult } | { readonly kind: 'error'; readonly code: string };

/** Feeds the datagrams in turn; fails the property for any throw that is not one of the typed errors. */
function feed(datagrams: readonly Buffer[], reader = new QuicInitialReader()): Outcome {
  let result: QuicReadResult = { done: false };
  for (const datagram of datagrams) {
    try {
      result = reader.push(datagram);
    } catch (error) {
      if (error instanceof QuicInitialError) {
        expect(QUIC_CODES).toContain(error.code);
        return { kind: 'error', code: error.code };
      }
      if (error instanceof ClientHelloError) {
        expect(HELLO_CODES).toContain(error.code);
        return { kind: 'error', code: error.code };
      }
      throw new Error(`the reader threw something other than a typed error: ${String(error)}`, { cause: error });
    }
    if (result.done) break;
  }
  return { kind: 'result', result };
}

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic');
const RFC_INITIALS = ['rfc9001', 'rfc9369'].map((rfc) => Buffer.from(fs.readFileSync(path.join(fixtures, `${rfc}-client-initial.hex`), 'utf8').trim(), 'hex'));
const DCID = Buffer.from('0102030405060708', 'hex');
const MESSAGE = sampleHelloMessage('fuzz.example', ['h3']);
const BUILT = buildInitialDatagram({ dcid: DCID, packetNumber: 0, frames: [cryptoFrame(0, MESSAGE)] });

/** One change to a datagram: a byte overwritten, a truncation, bytes inserted. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
);

type Mutation = { kind: 'set'; at: number; value: number } | { kind: 'truncate'; at: number } | { kind: 'insert'; at: number; bytes: Uint8Array };

function mutate(datagram: Buffer, changes: readonly Mutation[]): Buffer {
  let bytes = Buffer.from(datagram);
  for (const change of changes) {
    const at = change.at % Math.max(bytes.length, 1);
    switch (change.kind) {
      case 'set':
        bytes[at] = change.value;
        break;
      case 'truncate':
        bytes = bytes.subarray(0, at);
        break;
      case 'insert':
        bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(change.bytes), bytes.subarray(at)]);
        break;
    }
  }
  return bytes;
}

describe('QUIC Initial reader, fuzzed', () => {
  it('answers every mutated or truncated Initial (the RFCs’ and a built one) with a typed error, never another throw', () => {
    fc.assert(
      fc.property(fc.constantFrom(...RFC_INITIALS, BUILT), fc.array(mutation, { minLength: 1, maxLength: 4 }), (datagram, changes) => {
        const outcome = feed([mutate(datagram, changes)]);
        // A change the AEAD covers cannot give a hello; only the padding-free header bytes the AEAD does not cover could, and those are all checked.
        if (outcome.kind === 'result' && outcome.result.done) expect(outcome.result.hello.serverName).toMatch(/^(example\.com|fuzz\.example)$/);
      }),
      { numRuns: 400 },
    );
  });

  it('answers any properly protected payload (random frames) with a typed error, “need more” or a hello', () => {
    fc.assert(
      fc.property(fc.constantFrom(QUIC_V1, QUIC_V2), fc.uint8Array({ minLength: 1, maxLength: 300 }), (version, payload) => {
        feed([buildInitialDatagram({ dcid: DCID, version, packetNumber: 0, frames: [Buffer.from(payload)] })]);
      }),
      { numRuns: 300 },
    );
  });

  it('answers a hello with random bytes changed, carried in valid CRYPTO frames, with a typed error or a hello', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ at: fc.nat(MESSAGE.length - 1), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 6 }), (changes) => {
        const message = Buffer.from(MESSAGE);
        for (const { at, value } of changes) message[at] = value;
        feed([buildInitialDatagram({ dcid: DCID, packetNumber: 0, frames: [cryptoFrame(0, message)] })]);
      }),
      { numRuns: 300 },
    );
  });

  it('reassembles the same hello whatever the cuts, overlaps, packets, datagrams and order', () => {
    const whole = feed([BUILT]);
    if (whole.kind !== 'result' || !whole.result.done) throw new Error('the built Initial holds a hello');
    const expected = whole.result.hello;
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: MESSAGE.length - 1 }), { maxLength: 6 }),
        fc.nat(20),
        fc.boolean(),
        fc.infiniteStream(fc.nat()),
        (cuts, overlap, coalesce, randomness) => {
          const points = [0, ...cuts.sort((a, b) => a - b), MESSAGE.length];
          // Each piece may start a few bytes early: overlapping data, identical where it overlaps.
          const pieces = points.slice(1).map((end, i) => {
            const start = Math.max(0, points[i]! - (i > 0 ? overlap : 0));
            return cryptoFrame(start, MESSAGE.subarray(start, end));
          });
          const shuffled = [...pieces];
          const random = randomness[Symbol.iterator]();
          for (let i = shuffled.length - 1; i > 0; i--) {
            const j = random.next().value! % (i + 1);
            [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
          }
          let datagrams: Buffer[];
          if (coalesce) {
            const packets = shuffled.map((frame, packetNumber) => buildInitial({ dcid: DCID, packetNumber, frames: [frame] }));
            const total = packets.reduce((sum, p) => sum + p.length, 0);
            datagrams = [Buffer.concat([...packets, Buffer.alloc(Math.max(0, 1200 - total))])];
          } else {
            datagrams = shuffled.map((frame, packetNumber) => buildInitialDatagram({ dcid: DCID, packetNumber, frames: [frame] }));
          }
          const outcome = feed(datagrams);
          expect(outcome.kind).toBe('result');
          if (outcome.kind === 'result') {
            expect(outcome.result.done).toBe(true);
            if (outcome.result.done) expect(outcome.result.hello).toEqual(expected);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
