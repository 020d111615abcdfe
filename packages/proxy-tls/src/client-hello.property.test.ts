import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type ClientHello, ClientHelloError, type ClientHelloErrorCode, type ParseResult, parseClientHello } from './client-hello.js';
import { type Extension, type HelloFields, GREASY_FIELDS, ext, handshake, helloBody, tlsRecords, segments } from './test-support/hello-builder.js';

// The fuzzing issue #5 asks for. The parser reads untrusted bytes from every redirected
// connection, so whatever arrives it must answer in one of three ways: "need more" (with a
// positive count no larger than the rest of a valid hello), a hello, or a ClientHelloError
// with a known code and an offset inside the input. It is synchronous, so a hang would be
// this file timing out. Run counts are sized for CI on two cores (the file runs in well
// under ten seconds there).

const CODES: readonly ClientHelloErrorCode[] = ['COPROXY_TLS_NOT_TLS', 'COPROXY_TLS_BAD_RECORD', 'COPROXY_TLS_NOT_CLIENT_HELLO', 'COPROXY_TLS_MALFORMED', 'COPROXY_TLS_TOO_LARGE', 'COPROXY_TLS_DUPLICATE_EXTENSION'];

type Outcome = { readonly kind: 'more'; readonly needed: number } | { readonly kind: 'hello'; readonly hello: ClientHello; readonly consumed: number } | { readonly kind: 'error'; readonly error: ClientHelloError };

/** Parses, and fails the property for anything but the three allowed answers. */
function outcome(bytes: Buffer, maxBytes?: number): Outcome {
  let result: ParseResult;
  try {
    result = parseClientHello(bytes, maxBytes);
  } catch (error) {
    if (!(error instanceof ClientHelloError)) throw new Error(`the parser threw something other than a ClientHelloError: ${String(error)}`, { cause: error });
    expect(CODES).toContain(error.code);
    expect(Number.isInteger(error.offset) && error.offset >= 0 && error.offset <= bytes.length).toBe(true);
    return { kind: 'error', error };
  }
  if (!result.done) {
    expect(Number.isInteger(result.needed) && result.needed >= 1).toBe(true);
    return { kind: 'more', needed: result.needed };
  }
  expect(result.consumed).toBeGreaterThanOrEqual(9 + 38);
  expect(result.consumed).toBeLessThanOrEqual(bytes.length);
  return { kind: 'hello', hello: result.hello, consumed: result.consumed };
}

const u16 = fc.integer({ min: 0, max: 0xffff });
const alnum = fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789-/.'), minLength: 1, maxLength: 12 });
const DECODED = new Set([0x0000, 0x000a, 0x000b, 0x000d, 0x0010, 0x002b, 0xfe0d]);

/** Every extension the parser decodes, well formed, and others as opaque bytes. */
const extension: fc.Arbitrary<Extension> = fc.oneof(
  fc.domain().map((name) => ext.serverName(name)),
  fc.array(alnum, { minLength: 1, maxLength: 4 }).map((protocols) => ext.alpn(...protocols)),
  fc.array(u16, { maxLength: 6 }).map((versions) => ext.supportedVersions(...versions)),
  fc.array(u16, { maxLength: 12 }).map((groups) => ext.supportedGroups(...groups)),
  fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 4 }).map((formats) => ext.ecPointFormats(...formats)),
  fc.array(u16, { maxLength: 12 }).map((schemes) => ext.signatureAlgorithms(...schemes)),
  fc
    .record({ kdf: u16, aead: u16, configId: fc.integer({ min: 0, max: 255 }), enc: fc.uint8Array({ maxLength: 40 }), payload: fc.uint8Array({ minLength: 1, maxLength: 80 }) })
    .map(({ enc, payload, ...rest }) => ext.echOuter({ ...rest, enc: Buffer.from(enc), payload: Buffer.from(payload) })),
  fc.record({ type: u16.filter((type) => !DECODED.has(type)), data: fc.uint8Array({ maxLength: 60 }) }).map(({ type, data }) => ext.raw(type, Buffer.from(data))),
);

const helloFields: fc.Arbitrary<HelloFields> = fc.record({
  legacyVersion: fc.constantFrom(0x0300, 0x0301, 0x0302, 0x0303),
  random: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => Buffer.from(bytes)),
  sessionId: fc.uint8Array({ maxLength: 32 }).map((bytes) => Buffer.from(bytes)),
  cipherSuites: fc.array(u16, { minLength: 1, maxLength: 40 }),
  compressionMethods: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 3 }),
  extensions: fc.option(fc.uniqueArray(extension, { selector: (e) => e.type, maxLength: 10 }), { nil: undefined }),
});

/** A valid hello as the message (handshake header and body) and its fields. */
const validMessage = helloFields.map((fields) => ({ fields, message: handshake(helloBody(fields)) }));

/** Record sizes and TCP cut points for a message of `length` bytes. */
const fragmentation = (length: number) =>
  fc.record({
    sizes: fc.array(fc.integer({ min: 1, max: Math.max(1, length) }), { minLength: 1, maxLength: 8 }),
    cuts: fc.array(fc.integer({ min: 1, max: length + 200 }), { maxLength: 12 }),
  });

/** Parses `pieces` as they would arrive, one TCP segment after another: "need more" until the last. */
function parseIncrementally(pieces: readonly Buffer[]): Outcome {
  let buffer = Buffer.alloc(0);
  let last: Outcome = { kind: 'more', needed: 5 };
  for (const [index, piece] of pieces.entries()) {
    buffer = Buffer.concat([buffer, piece]);
    last = outcome(buffer);
    if (index < pieces.length - 1) expect(last.kind).toBe('more');
    if (last.kind === 'more') expect(last.needed).toBeLessThanOrEqual(pieces.slice(index + 1).reduce((sum, p) => sum + p.length, 0));
  }
  return last;
}

const withoutTlsRecordCount = (hello: ClientHello): Omit<ClientHello, 'tlsRecordCount'> => {
  const { tlsRecordCount: _tlsRecordCount, ...rest } = hello;
  return rest;
};

describe('parseClientHello under fuzzing', () => {
  it('answers random bytes with "need more", a hello or a ClientHelloError, nothing else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.option(fc.integer({ min: 1, max: 70_000 }), { nil: undefined }), (bytes, maxBytes) => {
        outcome(Buffer.from(bytes), maxBytes);
      }),
      { numRuns: 1000 },
    );
  });

  it('answers random bytes behind a plausible record and handshake header the same way', () => {
    // Random bytes rarely start with 22; these get past the first checks into the body.
    const framed = fc.record({
      version: fc.integer({ min: 0x0300, max: 0x0304 }),
      body: fc.uint8Array({ minLength: 0, maxLength: 400 }),
      claimed: fc.option(fc.integer({ min: 0, max: 0xffff }), { nil: undefined }),
    });
    fc.assert(
      fc.property(framed, ({ version, body, claimed }) => {
        const message = Buffer.concat([Buffer.from([1]), Buffer.from([0, (body.length >> 8) & 0xff, body.length & 0xff]), body]);
        const bytes = tlsRecords(message, { version });
        if (claimed !== undefined) bytes.writeUInt16BE(claimed, 3);
        outcome(bytes);
      }),
      { numRuns: 1000 },
    );
  });

  it('reads back every field of a valid hello it is given', () => {
    fc.assert(
      fc.property(validMessage, ({ fields, message }) => {
        const result = outcome(tlsRecords(message));
        if (result.kind !== 'hello') throw new Error(`a valid hello was not read: ${JSON.stringify(result)}`);
        const extensions = fields.extensions ?? [];
        expect(result.hello.cipherSuites).toEqual(fields.cipherSuites);
        expect(result.hello.compressionMethods).toEqual(fields.compressionMethods);
        expect(result.hello.sessionId).toEqual(fields.sessionId);
        expect(result.hello.random).toEqual(fields.random);
        expect(result.hello.extensions).toEqual(extensions.map((e) => e.type));
        expect(result.hello.ech !== undefined).toBe(extensions.some((e) => e.type === 0xfe0d));
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a valid hello with COPROXY_TLS_TOO_LARGE exactly when it is larger than maxBytes', () => {
    fc.assert(
      fc.property(validMessage, fc.integer({ min: 1, max: 2000 }), ({ message }, maxBytes) => {
        const result = outcome(tlsRecords(message), maxBytes);
        if (message.length - 4 <= maxBytes) expect(result.kind).toBe('hello');
        else expect(result.kind === 'error' && result.error.code).toBe('COPROXY_TLS_TOO_LARGE');
      }),
      { numRuns: 300 },
    );
  });

  it('survives a valid hello with bits flipped, length fields rewritten or the end cut off', () => {
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), bits: fc.array(fc.nat(), { minLength: 1, maxLength: 6 }) }),
      fc.record({ kind: fc.constant('length' as const), at: fc.nat(), value: u16 }),
      fc.record({ kind: fc.constant('truncate' as const), keep: fc.nat() }),
    );
    fc.assert(
      fc.property(validMessage, fc.array(fc.integer({ min: 1, max: 64 }), { maxLength: 3 }), mutation, ({ message }, sizes, change) => {
        const bytes = Buffer.from(tlsRecords(message, sizes.length === 0 ? {} : { sizes }));
        switch (change.kind) {
          case 'flip':
            for (const bit of change.bits) bytes[Math.floor(bit / 8) % bytes.length]! ^= 1 << bit % 8;
            outcome(bytes);
            return;
          case 'length':
            // Any two bytes may be a length field: record, handshake, vector or extension.
            bytes.writeUInt16BE(change.value, change.at % (bytes.length - 1));
            outcome(bytes);
            return;
          case 'truncate': {
            // Every proper prefix of a valid hello is incomplete, never an error.
            const keep = change.keep % bytes.length;
            const result = outcome(bytes.subarray(0, keep));
            expect(result.kind).toBe('more');
            if (result.kind === 'more') expect(result.needed).toBeLessThanOrEqual(bytes.length - keep);
            return;
          }
        }
      }),
      { numRuns: 1000 },
    );
  });

  it('parses a valid hello fragmented arbitrarily into records and TCP segments as it parses it whole', () => {
    fc.assert(
      fc.property(
        validMessage.chain(({ message }) => fc.record({ message: fc.constant(message), split: fragmentation(message.length) })),
        ({ message, split }) => {
          const whole = outcome(tlsRecords(message));
          if (whole.kind !== 'hello') throw new Error('a valid hello was not read whole');
          const bytes = tlsRecords(message, { sizes: split.sizes });
          const pieces = segments(bytes, split.cuts);

          const result = parseIncrementally(pieces);

          if (result.kind !== 'hello') throw new Error(`the fragmented hello ended as ${result.kind}`);
          expect(result.consumed).toBe(bytes.length);
          expect(withoutTlsRecordCount(result.hello)).toEqual(withoutTlsRecordCount(whole.hello));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('parses one hello split into two records at every offset, fed one byte at a time, as it parses it whole', () => {
    const message = handshake(helloBody(GREASY_FIELDS));
    const whole = outcome(tlsRecords(message));
    if (whole.kind !== 'hello') throw new Error('the hello was not read whole');

    for (let at = 1; at < message.length; at++) {
      const bytes = tlsRecords(message, { sizes: [at, message.length] });
      const pieces = segments(
        bytes,
        Array.from({ length: bytes.length }, (_, i) => i),
      );
      const result = parseIncrementally(pieces);

      if (result.kind !== 'hello') throw new Error(`split at ${at}: ended as ${result.kind}`);
      expect(result.hello).toEqual({ ...whole.hello, tlsRecordCount: 2 });
    }
  });

  it('reports a fault in the message at the same message byte however the message is cut into records', () => {
    // One fault in the body (an odd cipher_suites length): wherever the record headers fall,
    // the reported offset points at the same byte of the message.
    const message = Buffer.from(handshake(helloBody({ cipherSuites: [0x1301, 0x1302, 0x1303] })));
    message.writeUInt16BE(5, 4 + 35);
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 5 }), (sizes) => {
        const bytes = tlsRecords(message, { sizes });
        const result = outcome(bytes);
        if (result.kind !== 'error') throw new Error(`expected COPROXY_TLS_MALFORMED, got ${result.kind}`);
        expect(result.error.code).toBe('COPROXY_TLS_MALFORMED');
        // The fault is at message byte 4 + 37: the first byte of the suites.
        const headersBefore = countHeadersBefore(bytes, result.error.offset);
        expect(result.error.offset - 5 * headersBefore).toBe(4 + 37);
      }),
      { numRuns: 200 },
    );
  });
});

/** How many record headers lie before stream offset `at`. */
function countHeadersBefore(bytes: Buffer, at: number): number {
  let count = 0;
  for (let offset = 0; offset < at; offset += 5 + bytes.readUInt16BE(offset + 3)) count++;
  return count;
}

describe('parseClientHello on unusual server_name values', () => {
  // Legal framing, unusual content: whatever the entries say, the parser must read the hello,
  // keep every entry as sent, and name the server only when exactly one host_name entry is a
  // DNS name (lower-cased, without its trailing dot). The oracle is written apart from the parser.
  const DNS = /^(?=.{1,253}$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*$/;
  const caseMixed = fc.domain().chain((name) =>
    fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((upper) => [...name].map((c, i) => (upper[i] ? c.toUpperCase() : c)).join('')),
  );
  const nameBytes = fc.oneof(
    { weight: 4, arbitrary: caseMixed.map((name) => Buffer.from(name, 'latin1')) },
    { weight: 2, arbitrary: caseMixed.map((name) => Buffer.from(`${name}.`, 'latin1')) },
    { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
    { weight: 1, arbitrary: fc.integer({ min: 200, max: 4000 }).map((n) => Buffer.alloc(n, 0x61)) },
    { weight: 1, arbitrary: fc.array(fc.stringMatching(/^[a-z]{1,63}$/), { minLength: 4, maxLength: 9 }).map((labels) => Buffer.from(labels.join('.'), 'latin1')) },
    { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)) },
    { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 20 }).map((text) => Buffer.from(text, 'utf8')) },
  );
  const entry = fc.record({ type: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 255 }) }), name: nameBytes });
  const serverName = fc.oneof(
    { weight: 6, arbitrary: fc.array(entry, { minLength: 1, maxLength: 3 }).map((entries) => ({ entries, extension: ext.serverNameEntries(...entries) })) },
    { weight: 1, arbitrary: fc.constant({ entries: [], extension: ext.raw(0x0000, Buffer.from([0, 0])) }) },
    { weight: 1, arbitrary: fc.constant({ entries: [], extension: ext.raw(0x0000) }) },
  );

  it('reads the hello, keeps every entry and names the server only when one host_name is a DNS name', () => {
    fc.assert(
      fc.property(serverName, fc.array(fc.integer({ min: 1, max: 600 }), { maxLength: 3 }), ({ entries, extension }, sizes) => {
        const bytes = tlsRecords(handshake(helloBody({ extensions: [ext.supportedVersions(0x0304), extension] })), sizes.length === 0 ? {} : { sizes });
        const result = outcome(bytes);
        if (result.kind !== 'hello') throw new Error(`a hello with a well-framed server_name was not read: ${result.kind === 'error' ? result.error.message : result.kind}`);
        const { hello } = result;
        expect(hello.serverNames).toEqual(entries.map(({ type, name }) => ({ type, name: name.toString('latin1') })));

        const hostNames = entries.filter((e) => e.type === 0).map((e) => e.name.toString('latin1'));
        const single = hostNames.length === 1 ? hostNames[0]!.toLowerCase() : undefined;
        const canonical = single?.endsWith('.') === true ? single.slice(0, -1) : single;
        const expected = canonical !== undefined && DNS.test(canonical) ? canonical : undefined;
        expect(hello.serverName).toBe(expected);
        const unusual = entries.length !== hostNames.length || hostNames.length !== 1 || single !== canonical;
        expect(hello.serverNameAnomaly === undefined).toBe(expected !== undefined && !unusual);
        if (hostNames.length > 1) expect(hello.serverNameAnomaly).toBe('multiple-names');
        if (entries.length === 0) expect(hello.serverNameAnomaly).toBe('empty-list');
      }),
      { numRuns: 500 },
    );
  });
});
