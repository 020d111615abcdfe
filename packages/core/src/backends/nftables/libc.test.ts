import net from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SyscallError } from '../../model/errors.js';
import { decodeSockaddr } from './libc.js';

const AF_INET = 2;
const AF_INET6 = 10;

/** `struct sockaddr_in` as the kernel fills it on x86-64: family in host order, the rest in network order. */
function sockaddrIn(address: readonly number[], port: number): Buffer {
  const out = Buffer.alloc(28); // the caller's buffer is sized for sockaddr_in6
  out.writeUInt16LE(AF_INET, 0);
  out.writeUInt16BE(port, 2);
  Buffer.from(address).copy(out, 4);
  out.fill(0xee, 16); // bytes past sockaddr_in are not the kernel's: they must not matter
  return out;
}

/** `struct sockaddr_in6`, with a flow label and scope id that must not leak into the address. */
function sockaddrIn6(words: readonly number[], port: number): Buffer {
  const out = Buffer.alloc(28);
  out.writeUInt16LE(AF_INET6, 0);
  out.writeUInt16BE(port, 2);
  out.writeUInt32BE(0x000abcde, 4); // sin6_flowinfo
  words.forEach((word, i) => out.writeUInt16BE(word, 8 + i * 2));
  out.writeUInt32LE(3, 24); // sin6_scope_id
  return out;
}

describe('decoding an original destination', () => {
  it('reads an IPv4 address and port', () => {
    expect(decodeSockaddr(sockaddrIn([127, 0, 0, 1], 8080))).toEqual({ address: '127.0.0.1', port: 8080, family: 4 });
    expect(decodeSockaddr(sockaddrIn([203, 0, 113, 7], 0x0102))).toEqual({ address: '203.0.113.7', port: 258, family: 4 });
    expect(decodeSockaddr(sockaddrIn([255, 255, 255, 255], 65535))).toEqual({ address: '255.255.255.255', port: 65535, family: 4 });
  });

  it.each([
    [[0, 0, 0, 0, 0, 0, 0, 1], '::1'],
    [[0, 0, 0, 0, 0, 0, 0, 0], '::'],
    [[1, 0, 0, 0, 0, 0, 0, 0], '1::'],
    [[0xfd00, 0x200, 0, 0, 0, 0, 0, 1], 'fd00:200::1'],
    [[0x2001, 0xdb8, 0, 0, 1, 0, 0, 1], '2001:db8::1:0:0:1'],
    [[0x2001, 0xdb8, 0, 1, 1, 1, 1, 1], '2001:db8:0:1:1:1:1:1'],
    [[1, 0, 0, 1, 0, 0, 0, 1], '1:0:0:1::1'],
    [[0x2001, 0x0db8, 0x00ab, 0xcdef, 0, 0, 0, 0x000f], '2001:db8:ab:cdef::f'],
    [[0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff], 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ])('writes %j in the canonical form %s', (words, expected) => {
    expect(decodeSockaddr(sockaddrIn6(words, 443))).toEqual({ address: expected, port: 443, family: 6 });
  });

  it('writes any IPv6 address in canonical form, the same as WHATWG URLs do', () => {
    const word = fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff }));
    fc.assert(
      fc.property(fc.array(word, { minLength: 8, maxLength: 8 }), fc.integer({ min: 0, max: 65535 }), (words, port) => {
        const full = words.map((w) => w.toString(16)).join(':');
        const decoded = decodeSockaddr(sockaddrIn6(words, port));
        expect(decoded).toEqual({ address: new URL(`http://[${full}]/`).hostname.slice(1, -1), port, family: 6 });
        expect(net.isIP(decoded.address)).toBe(6);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses an address family it does not know', () => {
    const unix = Buffer.alloc(28);
    unix.writeUInt16LE(1, 0); // AF_UNIX
    expect(() => decodeSockaddr(unix)).toThrow(SyscallError);
    expect(() => decodeSockaddr(unix)).toThrow(expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED' }));
    // AF_INET in network order is not AF_INET: the family is read in host order.
    const swapped = sockaddrIn([127, 0, 0, 1], 80);
    swapped.writeUInt16BE(AF_INET, 0);
    expect(() => decodeSockaddr(swapped)).toThrow(expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED' }));
  });
});
