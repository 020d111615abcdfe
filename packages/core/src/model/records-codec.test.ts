import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RecordsMalformedError } from './errors.js';
import { MAX_RECORDS_BYTES, RECORDS_VERSION, decodeRecords, encodeRecords } from './records-codec.js';
import { MAX_REDIRECTS, RedirectRecords } from './redirect-records.js';

const redirectorId = fc.stringMatching(/^[a-z0-9-]{1,32}$/);
const redirectorIds = fc.uniqueArray(redirectorId, { maxLength: MAX_REDIRECTS });
const records = redirectorIds.map((ids) => ids.reduce((acc, id) => acc.withRedirect(id), RedirectRecords.empty));

/** Runs `decode` and reports how it failed, so a property can say which failures are allowed. */
function outcome(blob: Uint8Array): { records: RedirectRecords } | { error: unknown } {
  try {
    return { records: decodeRecords(blob) };
  } catch (error) {
    return { error };
  }
}

function expectMalformed(blob: Uint8Array): RecordsMalformedError {
  const result = outcome(blob);
  expect(result).toHaveProperty('error');
  const error = 'error' in result ? result.error : undefined;
  expect(error).toBeInstanceOf(RecordsMalformedError);
  expect((error as RecordsMalformedError).code).toBe('COPROXY_RECORDS_MALFORMED');
  return error as RecordsMalformedError;
}

/** The wire form written by hand, independent of the encoder. */
function wire(version: number, ids: readonly string[], count = ids.length): Buffer {
  return Buffer.concat([
    Buffer.from([version, count]),
    ...ids.map((id) => Buffer.concat([Buffer.from([id.length]), Buffer.from(id, 'latin1')])),
  ]);
}

describe('the redirect records codec', () => {
  it('writes the documented wire form: version, count, then length-prefixed ids', () => {
    const encoded = encodeRecords(RedirectRecords.empty.withRedirect('acme-av').withRedirect('dlp'));
    expect([...encoded]).toEqual([1, 2, 7, ...Buffer.from('acme-av'), 3, ...Buffer.from('dlp')]);
    expect([...encodeRecords(RedirectRecords.empty)]).toEqual([RECORDS_VERSION, 0]);
  });

  it('decodes what it encodes, for any records of up to 16 distinct ids', () => {
    fc.assert(
      fc.property(records, (original) => {
        const encoded = encodeRecords(original);
        expect(encoded.length).toBeLessThanOrEqual(MAX_RECORDS_BYTES);
        expect(encoded).toEqual(wire(RECORDS_VERSION, original.redirectedBy));
        const decoded = decodeRecords(encoded);
        expect(decoded.redirectedBy).toEqual(original.redirectedBy);
        expect(encodeRecords(decoded)).toEqual(encoded);
      }),
      { numRuns: 200 },
    );
  });

  it('decodes records from a plain Uint8Array and from a view into a larger buffer', () => {
    fc.assert(
      fc.property(records, fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ maxLength: 16 }), (original, before, after) => {
        const encoded = encodeRecords(original);
        const backing = new Uint8Array([...before, ...encoded, ...after]);
        const view = backing.subarray(before.length, before.length + encoded.length);
        expect(decodeRecords(view).redirectedBy).toEqual(original.redirectedBy);
        expect(decodeRecords(new Uint8Array(encoded)).redirectedBy).toEqual(original.redirectedBy);
      }),
    );
  });

  it('rejects every strict prefix of a valid encoding', () => {
    fc.assert(
      fc.property(records, (original) => {
        const encoded = encodeRecords(original);
        for (let length = 0; length < encoded.length; length++) expectMalformed(encoded.subarray(0, length));
      }),
    );
  });

  it('either rejects a single corrupted byte or decodes to records that encode to exactly the corrupted bytes', () => {
    fc.assert(
      fc.property(records, fc.nat(), fc.integer({ min: 1, max: 255 }), (original, at, delta) => {
        const corrupted = Buffer.from(encodeRecords(original));
        const index = at % corrupted.length;
        corrupted[index] = (corrupted[index]! + delta) & 0xff;
        const result = outcome(corrupted);
        if ('records' in result) expect(encodeRecords(result.records)).toEqual(corrupted);
        else expect(result.error).toBeInstanceOf(RecordsMalformedError);
      }),
      { numRuns: 200 },
    );
  });

  it('rejects trailing bytes after valid records', () => {
    fc.assert(
      fc.property(records, fc.uint8Array({ minLength: 1, maxLength: 8 }), (original, trailing) => {
        const encoded = encodeRecords(original);
        const error = expectMalformed(Buffer.concat([encoded, trailing]));
        // Past the bound the length check fires first, at the bound; otherwise at the end of the records.
        const expectedOffset = encoded.length + trailing.length > MAX_RECORDS_BYTES ? MAX_RECORDS_BYTES : encoded.length;
        expect(error.offset).toBe(expectedOffset);
      }),
    );
  });

  it('raises nothing but RecordsMalformedError on arbitrary bytes', () => {
    const plausible = fc
      .tuple(fc.integer({ min: 0, max: MAX_REDIRECTS + 1 }), fc.uint8Array({ maxLength: 598 }))
      .map(([count, rest]) => new Uint8Array([RECORDS_VERSION, count, ...rest]));
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 600 }), plausible), (blob) => {
        const result = outcome(blob);
        if ('error' in result) expect(result.error).toBeInstanceOf(RecordsMalformedError);
        else expect(encodeRecords(result.records)).toEqual(Buffer.from(blob));
      }),
      { numRuns: 200 },
    );
  });

  it('bounds an encoding at 530 bytes: 16 ids of 32 characters', () => {
    expect(MAX_RECORDS_BYTES).toBe(530);
    const longest = Array.from({ length: MAX_REDIRECTS }, (_, i) => i.toString(36).padStart(32, 'x'));
    const full = longest.reduce((acc, id) => acc.withRedirect(id), RedirectRecords.empty);
    const encoded = encodeRecords(full);
    expect(encoded.length).toBe(MAX_RECORDS_BYTES);
    expect(decodeRecords(encoded).redirectedBy).toEqual(longest);
    expect(expectMalformed(new Uint8Array(MAX_RECORDS_BYTES + 1)).offset).toBe(MAX_RECORDS_BYTES);
  });

  it('rejects version 2', () => {
    expect(expectMalformed(wire(2, ['acme-av'])).offset).toBe(0);
  });

  it('rejects a count of 17 redirects', () => {
    const ids = Array.from({ length: 17 }, (_, i) => `v${i}`);
    expect(expectMalformed(wire(1, ids)).offset).toBe(1);
  });

  it('rejects a count larger than the ids present', () => {
    expect(expectMalformed(wire(1, ['acme-av'], 2)).offset).toBe(2 + 1 + 7);
  });

  it('rejects an id that appears twice', () => {
    expect(expectMalformed(wire(1, ['acme-av', 'dlp', 'acme-av'])).offset).toBe(2 + 8 + 4 + 1);
  });

  it('rejects an id with upper-case letters', () => {
    expect(expectMalformed(wire(1, ['Acme-AV'])).offset).toBe(3);
  });

  it('rejects ids of length 0 and 33', () => {
    expect(expectMalformed(new Uint8Array([1, 1, 0])).offset).toBe(2);
    expect(expectMalformed(wire(1, ['a'.repeat(33)])).offset).toBe(2);
  });

  it('rejects ids with characters outside [a-z0-9-], including a trailing newline', () => {
    for (const id of ['acme_av', 'acme av', 'acme-av\n', 'caf\u00e9']) expectMalformed(wire(1, [id]));
  });
});
