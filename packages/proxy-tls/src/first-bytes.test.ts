import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_REQUEST_LINE, classifyFirstBytes } from './first-bytes.js';

const TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const VCHARS = Array.from({ length: 0x7e - 0x20 }, (_, i) => String.fromCharCode(0x21 + i)).join('');
const requestLine = fc
  .record({
    empty: fc.array(fc.constantFrom('\r\n', '\n'), { maxLength: 3 }),
    method: fc.string({ unit: fc.constantFrom(...TCHARS), minLength: 1, maxLength: 12 }),
    target: fc.string({ unit: fc.constantFrom(...VCHARS), minLength: 1, maxLength: 60 }),
    minor: fc.integer({ min: 0, max: 9 }),
    ending: fc.constantFrom('\r\n', '\n'),
  })
  .map(({ empty, method, target, minor, ending }) => Buffer.from(`${empty.join('')}${method} ${target} HTTP/1.${minor}${ending}Host: x\r\n\r\n`, 'latin1'));

describe('classifyFirstBytes', () => {
  it('recognises any RFC 9110 method token and target, after empty lines, once the request line has ended, and not before', () => {
    fc.assert(
      fc.property(requestLine, (bytes) => {
        const end = bytes.indexOf('HTTP/1.') + 8;
        const lineEnd = bytes[end] === 0x0d ? end + 2 : end + 1;
        for (let n = 1; n < lineEnd; n++) expect(classifyFirstBytes(bytes.subarray(0, n))).toBe('undecided');
        expect(classifyFirstBytes(bytes.subarray(0, lineEnd))).toBe('http1');
        expect(classifyFirstBytes(bytes)).toBe('http1');
      }),
      { numRuns: 300 },
    );
  });

  it('says tls at a first byte of 22 and h2 for the whole HTTP/2 preface', () => {
    expect(classifyFirstBytes(Buffer.from([0x16]))).toBe('tls');
    const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    for (let n = 1; n < preface.length; n++) expect(classifyFirstBytes(preface.subarray(0, n))).toBe('undecided');
    expect(classifyFirstBytes(preface)).toBe('h2');
  });

  it('never takes back unknown: no byte added after it makes the stream recognisable', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), fc.uint8Array({ maxLength: 64 }), (head, more) => {
        const first = classifyFirstBytes(Buffer.from(head));
        const later = classifyFirstBytes(Buffer.concat([head, more]));
        if (first === 'unknown') expect(later).toBe('unknown');
        if (first !== 'undecided') expect(later).toBe(first);
      }),
      { numRuns: 2000 },
    );
  });

  it('says unknown at the first byte that cannot start a request, a TLS record or the preface', () => {
    for (const byte of [0x00, 0x01, 0x15, 0x17, 0x20, 0x7f, 0x80, 0xff]) expect(classifyFirstBytes(Buffer.from([byte]))).toBe('unknown');
  });

  it('gives up on a request line longer than its bound', () => {
    const long = Buffer.from(`GET /${'a'.repeat(MAX_REQUEST_LINE)}`, 'latin1');
    expect(classifyFirstBytes(long.subarray(0, MAX_REQUEST_LINE - 1))).toBe('undecided');
    expect(classifyFirstBytes(long)).toBe('unknown');
  });
});
