import net from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { addressToBytes, bytesToAddress, isV4Mapped } from './ip-address.js';

/** Sixteen bytes with long zero runs more often than uniform bytes would give. */
const ipv6Bytes = fc
  .array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
  .map((words) => {
    const out = Buffer.alloc(16);
    words.forEach((word, i) => out.writeUInt16BE(word, i * 2));
    return out;
  });
const ipv4Bytes = fc.uint8Array({ minLength: 4, maxLength: 4 }).map((bytes) => Buffer.from(bytes));

/** All eight groups, uncompressed, some with leading zeros: text the parser must accept. */
function fullForm(bytes: Buffer): string {
  const words = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16).padStart(4, '0'));
  return words.join(':');
}

/** RFC 5952 section 4 written another way: compress the first longest run of two or more zero groups. */
function rfc5952(bytes: Buffer): string {
  const text = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16)).join(':');
  let longest = '';
  for (const [run] of `:${text}:`.matchAll(/:0(?::0)+(?=:)/g)) if (run.length > longest.length) longest = run;
  if (longest === '') return text;
  const compressed = `:${text}:`.replace(`${longest}:`, '::');
  return compressed.replace(/^:(?!:)/, '').replace(/(?<!:):$/, '');
}

describe('IP address conversion', () => {
  it('turns any 4 or 16 bytes into text and back into the same bytes', () => {
    fc.assert(
      fc.property(fc.oneof(ipv4Bytes, ipv6Bytes), (bytes) => {
        const text = bytesToAddress(bytes);
        expect(net.isIP(text)).toBe(bytes.length === 4 ? 4 : 6);
        expect(addressToBytes(text)).toEqual(bytes);
      }),
      { numRuns: 200 },
    );
  });

  it('writes IPv6 addresses in the canonical form of RFC 5952', () => {
    fc.assert(
      fc.property(ipv6Bytes, (bytes) => {
        expect(bytesToAddress(bytes)).toBe(rfc5952(bytes));
      }),
      { numRuns: 200 },
    );
  });

  it('reads uncompressed IPv6 text with leading zeros', () => {
    fc.assert(
      fc.property(ipv6Bytes, (bytes) => {
        expect(addressToBytes(fullForm(bytes))).toEqual(bytes);
        expect(addressToBytes(fullForm(bytes).toUpperCase())).toEqual(bytes);
      }),
      { numRuns: 200 },
    );
  });

  it('reads any IPv4 text to the bytes of its four numbers', () => {
    fc.assert(
      fc.property(fc.ipV4(), (text) => {
        const bytes = addressToBytes(text);
        expect([...bytes]).toEqual(text.split('.').map(Number));
        expect(bytesToAddress(bytes)).toBe(text);
      }),
      { numRuns: 200 },
    );
  });

  it('reads any IPv6 text, compressed or with an embedded IPv4 part, to bytes that survive a round trip', () => {
    fc.assert(
      fc.property(fc.ipV6(), (text) => {
        const bytes = addressToBytes(text);
        expect(bytes).toHaveLength(16);
        const canonical = bytesToAddress(bytes);
        expect(addressToBytes(canonical)).toEqual(bytes);
        expect(bytesToAddress(addressToBytes(canonical))).toBe(canonical);
        // Node's own parser sees the same address in both texts.
        const list = new net.BlockList();
        list.addAddress(text, 'ipv6');
        expect(list.check(canonical, 'ipv6')).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  it('compresses the longest zero run, the first of equal runs, and never a single zero group', () => {
    expect(bytesToAddress(addressToBytes('2001:db8:0:0:1:0:0:1'))).toBe('2001:db8::1:0:0:1');
    expect(bytesToAddress(addressToBytes('2001:0db8::0001'))).toBe('2001:db8::1');
    expect(bytesToAddress(addressToBytes('2001:db8:0:0:0:1:0:0'))).toBe('2001:db8::1:0:0');
    expect(bytesToAddress(addressToBytes('2001:db8:0:1:1:1:1:1'))).toBe('2001:db8:0:1:1:1:1:1');
    expect(bytesToAddress(addressToBytes('2001:DB8::ABCD'))).toBe('2001:db8::abcd');
    expect(bytesToAddress(addressToBytes('1:0:0:0:0:0:0:0'))).toBe('1::');
  });

  it('reads and writes the unspecified and loopback addresses', () => {
    expect(addressToBytes('::')).toEqual(Buffer.alloc(16));
    expect(bytesToAddress(Buffer.alloc(16))).toBe('::');
    const loopback = Buffer.alloc(16);
    loopback[15] = 1;
    expect(addressToBytes('::1')).toEqual(loopback);
    expect(bytesToAddress(loopback)).toBe('::1');
  });

  it('recognises IPv4-mapped IPv6 addresses and only those', () => {
    const mapped = addressToBytes('::ffff:192.0.2.1');
    expect([...mapped]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
    expect(isV4Mapped(mapped)).toBe(true);
    expect(addressToBytes('::ffff:c000:201')).toEqual(mapped);
    expect(isV4Mapped(addressToBytes('::192.0.2.1'))).toBe(false);
    expect(isV4Mapped(addressToBytes('192.0.2.1'))).toBe(false);
    expect(isV4Mapped(addressToBytes('64:ff9b::192.0.2.1'))).toBe(false);
  });

  it('drops an IPv6 zone index', () => {
    expect(addressToBytes('fe80::1%eth0')).toEqual(addressToBytes('fe80::1'));
    // A VLAN interface name has a dot, which must not be read as an embedded IPv4 part.
    expect(addressToBytes('fe80::1%eth0.5')).toEqual(addressToBytes('fe80::1'));
    expect(addressToBytes('::ffff:192.0.2.1%2')).toEqual(addressToBytes('::ffff:192.0.2.1'));
  });

  it('rejects text that is not an address and byte counts other than 4 or 16', () => {
    for (const text of ['', 'localhost', '256.0.0.1', '1.2.3', '1::2::3', ':::', '12345::']) {
      expect(() => addressToBytes(text), text).toThrow(TypeError);
    }
    for (const length of [0, 3, 5, 15, 17]) expect(() => bytesToAddress(new Uint8Array(length))).toThrow(TypeError);
  });
});
