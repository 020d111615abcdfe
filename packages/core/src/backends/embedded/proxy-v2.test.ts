import net from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoproxyError, ProxyHeaderMalformedError, ProxyHeaderTooLargeError } from '../../model/errors.js';
import { addressToBytes, bytesToAddress, isV4Mapped } from '../../model/ip-address.js';
import { PROXY_V2_FIXED_BYTES, PROXY_V2_SIGNATURE, decodeProxyV2, encodeProxyV2, type ProxyV2Tlv } from './proxy-v2.js';

const LIMIT = 0xffff + PROXY_V2_FIXED_BYTES;

const address = fc.oneof(
  fc.ipV4(),
  fc.ipV6(),
  fc.ipV4().map((v4) => `::ffff:${v4}`),
  fc.constantFrom('127.0.0.1', '::1', '::', '0.0.0.0'),
);
const tlv: fc.Arbitrary<ProxyV2Tlv> = fc.record({
  type: fc.integer({ min: 0, max: 0xff }),
  value: fc.uint8Array({ maxLength: 64 }).map((bytes) => Buffer.from(bytes)),
});
const header = fc.record({
  source: fc.record({ address, port: fc.integer({ min: 0, max: 65535 }) }),
  destination: fc.record({ address, port: fc.integer({ min: 1, max: 65535 }) }),
  tlvs: fc.array(tlv, { maxLength: 5 }),
});

/** What the decoder reports for an address: IPv4-mapped IPv6 comes back as IPv4, as documented. */
function expectedEndpoint(text: string): { address: string; family: 4 | 6 } {
  const bytes = addressToBytes(text);
  const plain = isV4Mapped(bytes) ? bytes.subarray(12) : bytes;
  return { address: bytesToAddress(plain), family: plain.length === 4 ? 4 : 6 };
}

function attempt<TValue>(run: () => TValue): { value: TValue } | { error: unknown } {
  try {
    return { value: run() };
  } catch (error) {
    return { error };
  }
}

function thrownBy(run: () => unknown): unknown {
  const result = attempt(run);
  expect(result).toHaveProperty('error');
  return 'error' in result ? result.error : undefined;
}

/** A valid IPv4 header with one TLV, then each test breaks one thing. */
function sample(): Buffer {
  return encodeProxyV2({
    source: { address: '192.0.2.1', port: 50000 },
    destination: { address: '10.1.2.3', port: 443 },
    tlvs: [{ type: 0xe0, value: Buffer.from([1, 0]) }],
  });
}

describe('the PROXY protocol v2 codec', () => {
  it('writes the header laid out in the HAProxy spec', () => {
    const encoded = encodeProxyV2({
      source: { address: '192.0.2.1', port: 0x1234 },
      destination: { address: '10.1.2.3', port: 443 },
      tlvs: [{ type: 0x04, value: Buffer.from([0xaa]) }],
    });
    expect([...encoded]).toEqual([
      ...PROXY_V2_SIGNATURE,
      0x21, // version 2, command PROXY
      0x11, // TCP over IPv4
      0x00, 12 + 4,
      192, 0, 2, 1,
      10, 1, 2, 3,
      0x12, 0x34,
      0x01, 0xbb,
      0x04, 0x00, 0x01, 0xaa,
    ]);
    const v6 = encodeProxyV2({ source: { address: '::1', port: 1 }, destination: { address: '::1', port: 2 }, tlvs: [] });
    expect(v6[13]).toBe(0x21);
    expect(v6.readUInt16BE(14)).toBe(36);
    expect(v6).toHaveLength(PROXY_V2_FIXED_BYTES + 36);
  });

  it('decodes what it encodes, for IPv4, IPv6 and mixed endpoints with any TLVs', () => {
    fc.assert(
      fc.property(header, (original) => {
        const encoded = encodeProxyV2(original);
        const decoded = decodeProxyV2(encoded, LIMIT);
        expect(decoded?.length).toBe(encoded.length);
        const source = expectedEndpoint(original.source.address);
        const destination = expectedEndpoint(original.destination.address);
        expect(decoded?.header).toEqual({
          source: { address: source.address, port: original.source.port },
          destination: { ...destination, port: original.destination.port },
          tlvs: original.tlvs,
        });
        expect(net.isIP(decoded!.header.destination.address)).toBe(destination.family);
      }),
      { numRuns: 200 },
    );
  });

  it('writes both endpoints as IPv6 when their families differ, the IPv4 one mapped', () => {
    const encoded = encodeProxyV2({
      source: { address: '192.0.2.1', port: 1000 },
      destination: { address: '2001:db8::1', port: 443 },
      tlvs: [],
    });
    expect(encoded[13]).toBe(0x21);
    expect([...encoded.subarray(16, 32)]).toEqual([...addressToBytes('::ffff:192.0.2.1')]);
    expect(decodeProxyV2(encoded, LIMIT)?.header).toEqual({
      source: { address: '192.0.2.1', port: 1000 },
      destination: { address: '2001:db8::1', port: 443, family: 6 },
      tlvs: [],
    });
    const reversed = encodeProxyV2({
      source: { address: '2001:db8::2', port: 1000 },
      destination: { address: '10.1.2.3', port: 443 },
      tlvs: [],
    });
    expect(decodeProxyV2(reversed, LIMIT)?.header.destination).toEqual({ address: '10.1.2.3', port: 443, family: 4 });
  });

  it('leaves the bytes after the header to the stream', () => {
    fc.assert(
      fc.property(header, fc.uint8Array({ minLength: 1, maxLength: 64 }), (original, payload) => {
        const encoded = encodeProxyV2(original);
        const decoded = decodeProxyV2(Buffer.concat([encoded, payload]), LIMIT);
        expect(decoded?.length).toBe(encoded.length);
        expect(decoded?.header.tlvs).toEqual(original.tlvs);
      }),
    );
  });

  it('asks for more bytes on every strict prefix of a valid header, or refuses it as too large', () => {
    fc.assert(
      fc.property(header, fc.integer({ min: PROXY_V2_FIXED_BYTES, max: 600 }), (original, limit) => {
        const encoded = encodeProxyV2(original);
        for (let length = 0; length < encoded.length; length++) {
          const result = attempt(() => decodeProxyV2(encoded.subarray(0, length), limit));
          if (length < PROXY_V2_FIXED_BYTES || encoded.length <= limit) {
            expect(result).toEqual({ value: undefined });
          } else {
            expect('error' in result && result.error).toBeInstanceOf(ProxyHeaderTooLargeError);
          }
        }
      }),
    );
  });

  it('refuses a header larger than the limit as soon as its length is known', () => {
    const encoded = sample();
    expect(decodeProxyV2(encoded, encoded.length)?.length).toBe(encoded.length);
    for (const data of [encoded, encoded.subarray(0, PROXY_V2_FIXED_BYTES)]) {
      const error = thrownBy(() => decodeProxyV2(data, encoded.length - 1));
      expect(error).toBeInstanceOf(ProxyHeaderTooLargeError);
      expect(error).toMatchObject({
        code: 'COPROXY_PROXY_HEADER_TOO_LARGE',
        announced: encoded.length,
        limit: encoded.length - 1,
      });
    }
  });

  it('refuses a peer that does not send the signature from its first differing byte', () => {
    expect(decodeProxyV2(Buffer.alloc(0), LIMIT)).toBeUndefined();
    const error = thrownBy(() => decodeProxyV2(Buffer.from('G'), LIMIT));
    expect(error).toBeInstanceOf(ProxyHeaderMalformedError);
    expect((error as ProxyHeaderMalformedError).code).toBe('COPROXY_PROXY_HEADER_MALFORMED');
    for (let at = 0; at < PROXY_V2_SIGNATURE.length; at++) {
      const data = Buffer.from(sample());
      data[at] = data[at]! ^ 0x01;
      expect(decodeProxyV2(data.subarray(0, at), LIMIT)).toBeUndefined();
      expect(() => decodeProxyV2(data.subarray(0, at + 1), LIMIT)).toThrow(ProxyHeaderMalformedError);
    }
  });

  it('refuses the LOCAL command and any version but 2', () => {
    for (const versionCommand of [0x20, 0x11, 0x31, 0x22]) {
      const data = sample();
      data[12] = versionCommand;
      expect(() => decodeProxyV2(data, LIMIT)).toThrow(ProxyHeaderMalformedError);
      expect(() => decodeProxyV2(data.subarray(0, PROXY_V2_FIXED_BYTES), LIMIT)).toThrow(ProxyHeaderMalformedError);
    }
  });

  it('refuses UDP, UNIX and unspecified transports', () => {
    for (const transport of [0x12, 0x22, 0x31, 0x32, 0x00, 0x13]) {
      const data = sample();
      data[13] = transport;
      expect(() => decodeProxyV2(data, LIMIT)).toThrow(ProxyHeaderMalformedError);
    }
  });

  it('refuses a length shorter than the address block', () => {
    const v4 = sample();
    v4.writeUInt16BE(11, 14);
    expect(() => decodeProxyV2(v4, LIMIT)).toThrow(ProxyHeaderMalformedError);
    const v6 = sample();
    v6[13] = 0x21; // now claims IPv6, whose address block is 36 bytes
    expect(() => decodeProxyV2(v6, LIMIT)).toThrow(ProxyHeaderMalformedError);
  });

  it('refuses destination port 0', () => {
    const data = sample();
    data.writeUInt16BE(0, PROXY_V2_FIXED_BYTES + 10);
    expect(() => decodeProxyV2(data, LIMIT)).toThrow(ProxyHeaderMalformedError);
  });

  it('refuses a TLV that overruns the header', () => {
    const data = sample();
    const tlvAt = PROXY_V2_FIXED_BYTES + 12;
    data.writeUInt16BE(3, tlvAt + 1); // the value has 2 bytes
    expect(() => decodeProxyV2(data, LIMIT)).toThrow(ProxyHeaderMalformedError);
    // Bytes past the announced length do not rescue it.
    expect(() => decodeProxyV2(Buffer.concat([data, Buffer.from([0])]), LIMIT)).toThrow(ProxyHeaderMalformedError);
  });

  it('refuses a TLV whose type and length are cut off', () => {
    for (const stray of [[0x04], [0x04, 0x00]]) {
      const data = Buffer.concat([sample(), Buffer.from(stray)]);
      data.writeUInt16BE(data.readUInt16BE(14) + stray.length, 14);
      expect(() => decodeProxyV2(data, LIMIT)).toThrow(ProxyHeaderMalformedError);
    }
  });

  it('copies TLV values out of the read buffer', () => {
    const data = sample();
    const decoded = decodeProxyV2(data, LIMIT);
    data.fill(0xff);
    expect(decoded?.header.tlvs).toEqual([{ type: 0xe0, value: Buffer.from([1, 0]) }]);
  });

  it('raises nothing but CoproxyError on arbitrary bytes after the signature', () => {
    const arbitrary = fc
      .tuple(
        fc.oneof(fc.constantFrom(0x21, 0x20), fc.integer({ min: 0, max: 0xff })),
        fc.oneof(fc.constantFrom(0x11, 0x21, 0x12), fc.integer({ min: 0, max: 0xff })),
        fc.uint8Array({ maxLength: 200 }),
        fc.option(fc.integer({ min: 0, max: 0xffff })),
      )
      .map(([versionCommand, transport, body, announced]) => {
        const fixed = Buffer.from([versionCommand, transport, 0, 0]);
        fixed.writeUInt16BE(announced ?? body.length, 2);
        return Buffer.concat([PROXY_V2_SIGNATURE, fixed, body]);
      });
    fc.assert(
      fc.property(arbitrary, fc.integer({ min: 0, max: LIMIT }), (data, limit) => {
        const result = attempt(() => decodeProxyV2(data, limit));
        if ('error' in result) expect(result.error).toBeInstanceOf(CoproxyError);
        else if (result.value !== undefined) expect(result.value.length).toBeLessThanOrEqual(data.length);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses to encode a TLV type above 0xff or a body over 65535 bytes', () => {
    expect(() =>
      encodeProxyV2({
        source: { address: '::1', port: 1 },
        destination: { address: '::1', port: 2 },
        tlvs: [{ type: 1, value: Buffer.alloc(0xffff) }],
      }),
    ).toThrow(RangeError);
    expect(() =>
      encodeProxyV2({
        source: { address: '::1', port: 1 },
        destination: { address: '::1', port: 2 },
        tlvs: [{ type: 0x100, value: Buffer.alloc(0) }],
      }),
    ).toThrow(RangeError);
  });
});
