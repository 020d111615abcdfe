import { describe, expect, it } from 'vitest';
import { type ClientHello, ClientHelloError, type ClientHelloErrorCode, type ParseResult, isGrease, parseClientHello } from './client-hello.js';
import {
  DEFAULT_RANDOM,
  GREASY_FIELDS,
  type HelloFields,
  clientHello,
  ext,
  handshake,
  helloBody,
  tlsRecords,
  segments,
  u16,
} from './test-support/hello-builder.js';
import { captureNodeHello } from './test-support/capture.js';

function parsed(bytes: Buffer, maxBytes?: number): { hello: ClientHello; consumed: number } {
  const result = parseClientHello(bytes, maxBytes);
  if (!result.done) throw new Error(`expected a whole hello, the parser needs ${result.needed} more bytes`);
  return result;
}

/** The ClientHelloError that parsing `bytes` throws (the test fails if it throws nothing or anything else). */
function rejection(bytes: Buffer, maxBytes?: number): ClientHelloError {
  let result: ParseResult;
  try {
    result = parseClientHello(bytes, maxBytes);
  } catch (error) {
    if (error instanceof ClientHelloError) return error;
    throw error;
  }
  throw new Error(`expected a ClientHelloError, got ${JSON.stringify(result)}`);
}

function expectRejected(bytes: Buffer, code: ClientHelloErrorCode, offset: number, maxBytes?: number): ClientHelloError {
  const error = rejection(bytes, maxBytes);
  expect({ code: error.code, offset: error.offset }).toEqual({ code, offset });
  expect(error.message).toContain(`(at byte ${offset})`);
  return error;
}

/** How many records `bytes` holds, walking their headers. */
function tlsRecordCountOf(bytes: Buffer): number {
  let count = 0;
  for (let offset = 0; offset < bytes.length; offset += 5 + bytes.readUInt16BE(offset + 3)) count++;
  return count;
}

/** A copy of `bytes` with a big-endian u16 written at `offset`. */
function patchU16(bytes: Buffer, offset: number, value: number): Buffer {
  const copy = Buffer.from(bytes);
  copy.writeUInt16BE(value, offset);
  return copy;
}

// Layout of a one-record hello from the builder with an empty session id (offsets in the stream):
//   0 record type, 1-2 record version, 3-4 record length
//   5 handshake type, 6-8 handshake length
//   9-10 legacy_version, 11-42 random, 43 session_id length
//   44-45 cipher_suites length, then 2 bytes per suite, then compression methods, then extensions.
const CIPHERS_AT = 44;

describe('parseClientHello on a real client', () => {
  it('reads SNI, ALPN and TLS 1.3 from Node’s ClientHello, and asks for more when it is cut short', async () => {
    const bytes = await captureNodeHello({ servername: 'example.com', ALPNProtocols: ['h2', 'http/1.1'] });
    const result = parseClientHello(bytes);
    expect(result.done).toBe(true);
    if (!result.done) return;
    expect(result.hello.serverName).toBe('example.com');
    expect(result.hello.alpn).toEqual(['h2', 'http/1.1']);
    expect(result.hello.supportedVersions).toContain(0x0304);
    expect(result.consumed).toBe(bytes.length);
    for (const cut of [1, 5, 6, bytes.length - 1]) {
      expect(parseClientHello(bytes.subarray(0, cut))).toMatchObject({ done: false });
    }
  });
});

describe('parseClientHello on a hello built by hand', () => {
  it('reads every field the proxy decides on', () => {
    const fields: HelloFields = {
      sessionId: Buffer.alloc(32, 7),
      cipherSuites: [0x1301, 0x1303, 0xc02f],
      compressionMethods: [0],
      extensions: [
        ext.serverName('WWW.Example.COM'),
        ext.alpn('h2', 'http/1.1'),
        ext.supportedVersions(0x0304, 0x0303),
        ext.supportedGroups(0x001d, 0x0017, 0x0018),
        ext.ecPointFormats(0, 1, 2),
        ext.signatureAlgorithms(0x0403, 0x0804, 0x0401),
        ext.raw(0x0023), // session_ticket, empty: carried, not decoded
      ],
    };
    const bytes = clientHello(fields);

    const { hello, consumed } = parsed(bytes);

    expect(consumed).toBe(bytes.length);
    expect(hello).toEqual({
      legacyVersion: 0x0303,
      tlsRecordVersion: 0x0301,
      random: DEFAULT_RANDOM,
      sessionId: Buffer.alloc(32, 7),
      cipherSuites: [0x1301, 0x1303, 0xc02f],
      compressionMethods: [0],
      extensions: [0x0000, 0x0010, 0x002b, 0x000a, 0x000b, 0x000d, 0x0023],
      serverName: 'www.example.com', // DNS names compare without case
      serverNameAnomaly: undefined,
      serverNames: [{ type: 0, name: 'WWW.Example.COM' }],
      alpn: ['h2', 'http/1.1'],
      supportedVersions: [0x0304, 0x0303],
      supportedGroups: [0x001d, 0x0017, 0x0018],
      ecPointFormats: [0, 1, 2],
      signatureAlgorithms: [0x0403, 0x0804, 0x0401],
      ech: undefined,
      tlsRecordCount: 1,
    });
  });

  it('keeps GREASE values in every list, in the client’s order, for the fingerprints to drop', () => {
    const { hello } = parsed(clientHello(GREASY_FIELDS));

    expect(hello.cipherSuites).toEqual([0x0a0a, 0x1301, 0x1302, 0xc02b, 0x3a3a]);
    expect(hello.extensions).toEqual([0x1a1a, 0x0000, 0x0010, 0x002b, 0x000a, 0x000b, 0x000d, 0xfafa]);
    expect(hello.supportedVersions).toEqual([0x2a2a, 0x0304, 0x0303]);
    expect(hello.supportedGroups).toEqual([0x4a4a, 0x001d, 0x0017]);
    expect(hello.signatureAlgorithms).toEqual([0x5a5a, 0x0403, 0x0804]);
    expect(hello.alpn).toEqual(['h2', 'http/1.1', '\x3a\x3a']);
    expect(hello.serverName).toBe('greasy.example');
    expect(hello.cipherSuites.filter(isGrease)).toEqual([0x0a0a, 0x3a3a]);
  });

  it('recognises exactly the sixteen GREASE values', () => {
    const grease = Array.from({ length: 0x10000 }, (_, value) => value).filter(isGrease);

    expect(grease).toEqual(Array.from({ length: 16 }, (_, i) => 0x0a0a + i * 0x1010));
  });

  it('reports an outer encrypted_client_hello, and then the SNI is the public name', () => {
    const bytes = clientHello({
      extensions: [
        ext.serverName('public.example'),
        ext.echOuter({ kdf: 0x0001, aead: 0x0003, configId: 0x2a, enc: Buffer.alloc(32, 1), payload: Buffer.alloc(200, 2) }),
        ext.supportedVersions(0x0304),
      ],
    });

    const { hello } = parsed(bytes);

    expect(hello.serverName).toBe('public.example');
    expect(hello.ech).toEqual({ configId: 0x2a, kdf: 0x0001, aead: 0x0003 });
    expect(hello.extensions).toEqual([0x0000, 0xfe0d, 0x002b]);
  });

  it('does not take an inner encrypted_client_hello marker for an outer one', () => {
    const { hello } = parsed(clientHello({ extensions: [ext.serverName('secret.example'), ext.raw(0xfe0d, Buffer.from([1]))] }));

    expect(hello.ech).toBeUndefined();
    expect(hello.serverName).toBe('secret.example');
  });

  it('reads a hello without extensions, as TLS 1.0 clients may send, and one whose server_name is empty', () => {
    const bare = parsed(clientHello({ legacyVersion: 0x0301, extensions: undefined })).hello;
    expect(bare).toMatchObject({ legacyVersion: 0x0301, extensions: [], serverName: undefined, alpn: [], supportedVersions: [] });

    const emptyName = parsed(clientHello({ extensions: [ext.raw(0x0000)] })).hello;
    expect(emptyName).toMatchObject({ extensions: [0x0000], serverName: undefined });
  });

  it('reassembles a hello split over several TLS records', () => {
    const message = handshake(helloBody(GREASY_FIELDS));
    const whole = parsed(tlsRecords(message)).hello;

    for (const sizes of [[1], [3, 1], [4], [10, 50], [message.length - 1]]) {
      const bytes = tlsRecords(message, { sizes });
      const { hello, consumed } = parsed(bytes);

      expect(consumed).toBe(bytes.length);
      expect(hello.tlsRecordCount).toBe(tlsRecordCountOf(bytes));
      expect({ ...hello, tlsRecordCount: whole.tlsRecordCount }).toEqual(whole);
    }
    expect(tlsRecordCountOf(tlsRecords(message, { sizes: [3, 1] }))).toBe(message.length - 2);
    expect(parsed(tlsRecords(message, { sizes: [1] })).hello.tlsRecordCount).toBe(message.length);
  });

  it('asks for exactly the bytes of the next record header, then of its body, as TCP segments arrive', () => {
    const message = handshake(helloBody(GREASY_FIELDS));
    const bytes = tlsRecords(message, { sizes: [50, 50, message.length] });
    const last = message.length - 100;
    const asked: number[] = [];

    // A client feeding exactly what is asked for meets each record header and body in turn.
    let have = 0;
    for (;;) {
      const result = parseClientHello(bytes.subarray(0, have));
      if (result.done) {
        expect(result.consumed).toBe(bytes.length);
        break;
      }
      asked.push(result.needed);
      have += result.needed;
      expect(have).toBeLessThanOrEqual(bytes.length);
    }

    expect(asked).toEqual([5, 50, 5, 50, 5, last]);
  });

  it('never asks for more than the rest of the hello, at any cut, and parses once the last byte is in', () => {
    const bytes = clientHello(GREASY_FIELDS, { sizes: [7, 30] });

    for (let have = 0; have < bytes.length; have++) {
      const result = parseClientHello(bytes.subarray(0, have));
      if (result.done) throw new Error(`done after ${have} of ${bytes.length} bytes`);
      expect(result.needed).toBeGreaterThanOrEqual(1);
      expect(result.needed).toBeLessThanOrEqual(bytes.length - have);
    }
    // The same bytes in any number of TCP segments make the same buffer in the end.
    const pieces = segments(bytes, [1, 2, 6, 9, 40, bytes.length - 1]);
    expect(pieces.length).toBe(7);
    expect(parsed(Buffer.concat(pieces)).consumed).toBe(bytes.length);
  });

  it('stops at the end of the hello’s last record, leaving what follows to the caller', () => {
    const hello = clientHello();
    const next = Buffer.from([0x17, 0x03, 0x03, 0x00, 0x01, 0xff]); // early data, say

    expect(parsed(Buffer.concat([hello, next])).consumed).toBe(hello.length);
  });
});

describe('parseClientHello’s typed errors', () => {
  it('COPROXY_TLS_NOT_TLS when the first byte is not a handshake record, at byte 0', () => {
    expectRejected(Buffer.from('GET / HTTP/1.1\r\n'), 'COPROXY_TLS_NOT_TLS', 0);
    expectRejected(Buffer.from([0x17]), 'COPROXY_TLS_NOT_TLS', 0); // one byte is enough to tell
  });

  it('COPROXY_TLS_BAD_RECORD for a TLS record version that is not 3.x, a length of 0 or over 2^14, or another TLS record type inside', () => {
    const hello = clientHello();

    expectRejected(patchU16(hello, 1, 0x0200), 'COPROXY_TLS_BAD_RECORD', 1);
    expectRejected(patchU16(hello, 3, 0), 'COPROXY_TLS_BAD_RECORD', 3);
    expectRejected(patchU16(hello, 3, 16_385), 'COPROXY_TLS_BAD_RECORD', 3);
    // The hello in two records, the second an application_data record.
    const split = tlsRecords(handshake(helloBody()), { sizes: [20] });
    const second = Buffer.from(split);
    second[25] = 0x17;
    expectRejected(second, 'COPROXY_TLS_BAD_RECORD', 25);
  });

  it('COPROXY_TLS_NOT_CLIENT_HELLO when the first handshake message is another, at its type byte', () => {
    expectRejected(tlsRecords(handshake(helloBody(), 2)), 'COPROXY_TLS_NOT_CLIENT_HELLO', 5);
  });

  it('COPROXY_TLS_MALFORMED with the offset of the fault, in one record or spread over many', () => {
    // cipher_suites of odd length: the fault is its first byte, 46.
    const oddSuites = patchU16(clientHello({ cipherSuites: [0x1301, 0x1302] }), CIPHERS_AT, 3);
    expectRejected(oddSuites, 'COPROXY_TLS_MALFORMED', CIPHERS_AT + 2);

    // The same message in 10-byte tlsRecordCount: byte 41 of the message is in the fifth record,
    // after five record headers (5 × 5 + 41 = 66), and the stream byte there is the same.
    const message = oddSuites.subarray(5);
    const spread = tlsRecords(message, { sizes: [10] });
    const error = expectRejected(spread, 'COPROXY_TLS_MALFORMED', 66);
    expect(spread[error.offset]).toBe(message[CIPHERS_AT + 2 - 5]);

    // An extension whose length runs past the extensions block: the fault is where its data would start.
    const withTicket = clientHello({ extensions: [ext.raw(0x0023, Buffer.alloc(4))] });
    // 46-47 one suite, 48 compression length, 49 null, 50-51 extensions length, 52-53 type, 54-55 length.
    expectRejected(patchU16(withTicket, 54, 100), 'COPROXY_TLS_MALFORMED', 56);

    // A session id longer than 32 bytes.
    expectRejected(clientHello({ sessionId: Buffer.alloc(33) }), 'COPROXY_TLS_MALFORMED', 44);

    // Two bytes of something else after the hello in the record that completes it.
    const body = helloBody();
    const trailing = tlsRecords(Buffer.concat([handshake(body), Buffer.from([1, 2])]));
    expectRejected(trailing, 'COPROXY_TLS_MALFORMED', 9 + body.length);
  });

  it('COPROXY_TLS_MALFORMED for the lists the proxy decides on when they are not what the RFCs allow', () => {
    const cases: [string, HelloFields][] = [
      ['an empty ALPN list', { extensions: [ext.alpn()] }],
      ['an empty ALPN protocol name', { extensions: [ext.alpn('h2', '')] }],
      ['an odd supported_groups list', { extensions: [ext.raw(0x000a, Buffer.from([0, 3, 0, 0x1d, 0]))] }],
      ['an ECH extension with an empty payload', { extensions: [ext.echOuter({ kdf: 1, aead: 1, configId: 1, enc: Buffer.alloc(32), payload: Buffer.alloc(0) })] }],
      ['no cipher suites', { cipherSuites: [] }],
      ['no compression methods', { compressionMethods: [] }],
      ['legacy_version 2.0', { legacyVersion: 0x0200 }],
    ];
    for (const [what, fields] of cases) {
      const error = rejection(clientHello(fields));
      expect({ what, code: error.code }).toEqual({ what, code: 'COPROXY_TLS_MALFORMED' });
      expect(error.offset).toBeGreaterThanOrEqual(9);
      expect(error.offset).toBeLessThanOrEqual(clientHello(fields).length);
    }
  });

  it('COPROXY_TLS_TOO_LARGE past maxBytes, once the first record is in, without waiting for the rest, at its length field', () => {
    const message = handshake(helloBody({ extensions: [ext.raw(0x0015, Buffer.alloc(500))] })); // padding
    const bytes = tlsRecords(message, { sizes: [100] });
    const messageLength = message.length - 4;

    expect(parsed(bytes, messageLength).consumed).toBe(bytes.length);
    const error = expectRejected(bytes.subarray(0, 105), 'COPROXY_TLS_TOO_LARGE', 6, messageLength - 1);
    expect(error.message).toContain(`${messageLength} bytes exceeds ${messageLength - 1}`);
    // The default bound is 64 KiB: a hello announcing more is refused after its first record.
    const huge = tlsRecords(handshake(Buffer.alloc(65_537)), { sizes: [16_384] }).subarray(0, 5 + 16_384);
    expectRejected(huge, 'COPROXY_TLS_TOO_LARGE', 6);
    // The handshake header spread over 1-byte tlsRecordCount: its length field starts in the second one.
    const spread = tlsRecords(message, { sizes: [1] });
    expectRejected(spread.subarray(0, 4 * 6), 'COPROXY_TLS_TOO_LARGE', 11, 100);
  });

  it('COPROXY_TLS_DUPLICATE_EXTENSION at the second occurrence', () => {
    const bytes = clientHello({ extensions: [ext.supportedGroups(0x001d), ext.raw(0x0023), ext.supportedGroups(0x0017)] });
    // Extensions from 52: supported_groups 4 + 4 bytes, session_ticket 4 bytes, then the second at 64.
    const error = expectRejected(bytes, 'COPROXY_TLS_DUPLICATE_EXTENSION', 64);

    expect(error.message).toContain('extension 0x000a appears twice');
    expect(u16(bytes.readUInt16BE(64))).toEqual(u16(0x000a));
  });
});

describe('parseClientHello: legal but unusual server_name values are facts, not failures', () => {
  // RFC 6066 §3 frames server_name loosely (names up to 2^16-1 bytes, name types beyond
  // host_name, a list); real servers read it in different ways. The parser reports what it
  // saw and a canonical name only when one is unambiguous, so that the policy decides.
  const sniOf = (fields: HelloFields, maxBytes?: number): Pick<ClientHello, 'serverName' | 'serverNameAnomaly' | 'serverNames'> => {
    const { hello } = parsed(clientHello(fields, { sizes: [16_384] }), maxBytes);
    return { serverName: hello.serverName, serverNameAnomaly: hello.serverNameAnomaly, serverNames: hello.serverNames };
  };

  it('a plain name, upper case or punycode: the lower-cased name, no anomaly', () => {
    expect(sniOf({ extensions: [ext.serverName('WWW.Example.COM')] })).toEqual({
      serverName: 'www.example.com',
      serverNameAnomaly: undefined,
      serverNames: [{ type: 0, name: 'WWW.Example.COM' }],
    });
    expect(sniOf({ extensions: [ext.serverName('xn--bcher-kva.example')] })).toMatchObject({ serverName: 'xn--bcher-kva.example', serverNameAnomaly: undefined });
  });

  it('a trailing dot: the name without it (what origins that accept it act on), flagged', () => {
    expect(sniOf({ extensions: [ext.serverName('Blocked.Example.')] })).toMatchObject({ serverName: 'blocked.example', serverNameAnomaly: 'trailing-dot' });
  });

  it('a name longer than DNS allows (253 bytes): no name, flagged too-long', () => {
    const long = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}.example`; // 263 bytes
    expect(sniOf({ extensions: [ext.serverName(long)] })).toMatchObject({ serverName: undefined, serverNameAnomaly: 'too-long' });
    // Up to what the 16-bit extensions block allows (65,535 bytes less the extension's and
    // the list's headers), when the hello bound admits it.
    const huge = 'x'.repeat(65_526);
    const result = sniOf({ extensions: [ext.serverName(huge)] }, 70_000);
    expect(result).toMatchObject({ serverName: undefined, serverNameAnomaly: 'too-long' });
    expect(result.serverNames[0]?.name.length).toBe(65_526);
  });

  it('an empty list, an empty extension or an empty name: no name, flagged', () => {
    expect(sniOf({ extensions: [ext.raw(0x0000, Buffer.from([0, 0]))] })).toMatchObject({ serverName: undefined, serverNameAnomaly: 'empty-list' });
    expect(sniOf({ extensions: [ext.raw(0x0000)] })).toMatchObject({ serverName: undefined, serverNameAnomaly: 'empty-list' });
    expect(sniOf({ extensions: [ext.serverName('')] })).toMatchObject({ serverName: undefined, serverNameAnomaly: 'empty-name' });
  });

  it('name types other than host_name: skipped, flagged; the host_name beside them is still the name', () => {
    expect(sniOf({ extensions: [ext.serverNameEntries({ type: 7, name: 'other' })] })).toEqual({
      serverName: undefined,
      serverNameAnomaly: 'not-host-name',
      serverNames: [{ type: 7, name: 'other' }],
    });
    expect(sniOf({ extensions: [ext.serverNameEntries({ type: 1, name: 'x' }, { type: 0, name: 'api.example' })] })).toMatchObject({
      serverName: 'api.example',
      serverNameAnomaly: 'not-host-name',
    });
  });

  it('two host_name entries: no name (origins disagree on which one counts), flagged', () => {
    expect(sniOf({ extensions: [ext.serverName('a.example', 'b.example')] })).toEqual({
      serverName: undefined,
      serverNameAnomaly: 'multiple-names',
      serverNames: [
        { type: 0, name: 'a.example' },
        { type: 0, name: 'b.example' },
      ],
    });
  });

  it('bytes that are not a DNS name (a space, raw UTF-8, an empty label, NUL): no name, flagged invalid-name', () => {
    for (const name of [Buffer.from('bad name'), Buffer.from('bücher.example', 'utf8'), Buffer.from('a..example'), Buffer.from('a.example\0.evil')]) {
      expect({ name: name.toString('latin1'), ...sniOf({ extensions: [ext.serverNameEntries({ type: 0, name })] }) }).toMatchObject({
        serverName: undefined,
        serverNameAnomaly: 'invalid-name',
      });
    }
  });
});
