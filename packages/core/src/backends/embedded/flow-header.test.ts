import { createSecretKey, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoproxyError, ProxyHeaderMalformedError, RecordsMalformedError } from '../../model/errors.js';
import { encodeRecords } from '../../model/records-codec.js';
import { MAX_REDIRECTS, RedirectRecords } from '../../model/redirect-records.js';
import { MAX_CONTEXT_BYTES } from '../../model/flow.js';
import {
  AUTH_TAG_BYTES, TLV_AUTH, TLV_CONTEXT, TLV_PID, TLV_RECORDS, decodeFlowHeader, encodeFlowHeader, verifyFlowHeaderAuth, type FlowHeader,
} from './flow-header.js';
import { addressToBytes, bytesToAddress, isV4Mapped } from '../../model/ip-address.js';
import { PROXY_V2_FIXED_BYTES, PROXY_V2_SIGNATURE, decodeProxyV2, encodeProxyV2, type ProxyV2Tlv } from './proxy-v2.js';

const LIMIT = 0xffff + PROXY_V2_FIXED_BYTES;

const redirectorId = fc.stringMatching(/^[a-z0-9-]{1,32}$/);
const records = fc
  .uniqueArray(redirectorId, { maxLength: MAX_REDIRECTS })
  .map((ids) => ids.reduce((acc, id) => acc.withRedirect(id), RedirectRecords.empty));
const address = fc.oneof(fc.ipV4(), fc.ipV6(), fc.ipV4().map((v4) => `::ffff:${v4}`));

/** What the decoder reports for an address: IPv4-mapped IPv6 comes back as IPv4. */
function endpoint(text: string): { address: string; family: 4 | 6 } {
  const bytes = addressToBytes(text);
  const plain = isV4Mapped(bytes) ? bytes.subarray(12) : bytes;
  return { address: bytesToAddress(plain), family: plain.length === 4 ? 4 : 6 };
}

const flow: fc.Arbitrary<FlowHeader> = fc
  .record({
    source: address,
    sourcePort: fc.integer({ min: 0, max: 65535 }),
    destination: address,
    destinationPort: fc.integer({ min: 1, max: 65535 }),
    records,
    context: fc.option(
      fc.record({
        owner: redirectorId,
        bytes: fc.uint8Array({ maxLength: MAX_CONTEXT_BYTES }).map((bytes) => Buffer.from(bytes)),
      }),
      { nil: undefined },
    ),
    pid: fc.option(fc.integer({ min: 0, max: 0xffffffff }), { nil: undefined }),
  })
  .map(({ source, sourcePort, destination, destinationPort, context, pid, ...rest }) => ({
    ...rest,
    // Canonical endpoints, so that the decoded header can be compared whole.
    source: { address: endpoint(source).address, port: sourcePort },
    destination: { ...endpoint(destination), port: destinationPort },
    ...(context !== undefined && { context }),
    ...(pid !== undefined && { pid }),
  }));

const plainFlow: FlowHeader = {
  source: { address: '192.0.2.1', port: 50000 },
  destination: { address: '10.1.2.3', port: 443, family: 4 },
  records: RedirectRecords.empty.withRedirect('acme-av'),
};

function decodeFlow(data: Buffer): FlowHeader {
  const decoded = decodeProxyV2(data, LIMIT);
  if (decoded === undefined) throw new Error('incomplete header');
  return decodeFlowHeader(decoded.header);
}

/** A flow header carrying exactly these TLVs. */
function withTlvs(tlvs: readonly ProxyV2Tlv[]): Buffer {
  return encodeProxyV2({ source: plainFlow.source, destination: plainFlow.destination, tlvs });
}

const recordsTlv = (value: RedirectRecords = plainFlow.records): ProxyV2Tlv => ({
  type: TLV_RECORDS,
  value: encodeRecords(value),
});
const contextTlv = (owner: string, bytes: Buffer): ProxyV2Tlv => ({
  type: TLV_CONTEXT,
  value: Buffer.concat([Buffer.from([owner.length]), Buffer.from(owner, 'latin1'), bytes]),
});
const pidTlv = (value: Buffer): ProxyV2Tlv => ({ type: TLV_PID, value });

function attempt<TValue>(run: () => TValue): { value: TValue } | { error: unknown } {
  try {
    return { value: run() };
  } catch (error) {
    return { error };
  }
}

describe('the flow header', () => {
  it('decodes what it encodes: endpoints, records, context with its owner, and pid', () => {
    fc.assert(
      fc.property(flow, (original) => {
        const encoded = encodeFlowHeader(original);
        const decoded = decodeProxyV2(encoded, LIMIT);
        expect(decoded?.length).toBe(encoded.length);
        const header = decodeFlowHeader(decoded!.header);
        expect(header).toEqual(original);
        expect(header.records.redirectedBy).toEqual(original.records.redirectedBy);
        expect('context' in header).toBe(original.context !== undefined);
        expect('pid' in header).toBe(original.pid !== undefined);
      }),
    );
  });

  it('carries the records, context and pid in TLVs 0xE0, 0xE1 and 0xE2', () => {
    const encoded = encodeFlowHeader({ ...plainFlow, context: { owner: 'dlp', bytes: Buffer.from('hi') }, pid: 0x01020304 });
    expect(decodeProxyV2(encoded, LIMIT)?.header.tlvs).toEqual([
      { type: 0xe0, value: Buffer.from([1, 1, 7, ...Buffer.from('acme-av')]) },
      { type: 0xe1, value: Buffer.from([3, ...Buffer.from('dlp'), ...Buffer.from('hi')]) },
      { type: 0xe2, value: Buffer.from([1, 2, 3, 4]) },
    ]);
  });

  it('asks for more bytes on every strict prefix of a valid flow header', () => {
    fc.assert(
      fc.property(flow, (original) => {
        const encoded = encodeFlowHeader(original);
        for (let length = 0; length < encoded.length; length++) {
          expect(decodeProxyV2(encoded.subarray(0, length), LIMIT)).toBeUndefined();
        }
      }),
      { numRuns: 30 },
    );
  });

  it('ignores TLVs outside its own, such as NOOP (0x04), and the reserved 0xEE', () => {
    const foreign = fc.record({
      type: fc.oneof(
        fc.constantFrom(0x04, 0xee),
        fc.integer({ min: 0, max: 0xdf }),
        fc.integer({ min: 0xf0, max: 0xff }),
      ),
      value: fc.uint8Array({ maxLength: 32 }).map((bytes) => Buffer.from(bytes)),
    });
    fc.assert(
      fc.property(flow, fc.array(foreign, { maxLength: 4 }), fc.nat(), (original, extra, at) => {
        const own = decodeProxyV2(encodeFlowHeader(original), LIMIT)!.header.tlvs;
        const split = at % (own.length + 1);
        const tlvs = [...own.slice(0, split), ...extra, ...own.slice(split)];
        const encoded = encodeProxyV2({ source: original.source, destination: original.destination, tlvs });
        expect(decodeFlow(encoded)).toEqual(original);
      }),
    );
    expect(
      decodeFlow(withTlvs([{ type: 0x04, value: Buffer.alloc(8) }, recordsTlv(), { type: 0xee, value: Buffer.from('x') }])),
    ).toEqual(plainFlow);
  });

  it('accepts a context of exactly 1024 bytes and refuses one of 1025', () => {
    expect(MAX_CONTEXT_BYTES).toBe(1024);
    const full = { ...plainFlow, context: { owner: 'acme-av', bytes: Buffer.alloc(1024, 7) } };
    expect(decodeFlow(encodeFlowHeader(full))).toEqual(full);
    const over = { ...plainFlow, context: { owner: 'acme-av', bytes: Buffer.alloc(1025, 7) } };
    expect(() => encodeFlowHeader(over)).toThrow(RangeError);
    expect(() => decodeFlow(withTlvs([recordsTlv(), contextTlv('acme-av', Buffer.alloc(1025, 7))]))).toThrow(
      ProxyHeaderMalformedError,
    );
  });

  it('refuses a context whose owner is missing, malformed or cut short', () => {
    const bad: readonly Buffer[] = [
      Buffer.alloc(0),
      Buffer.from([0, 1, 2, 3]),
      contextTlv('Acme-AV', Buffer.from('x')).value,
      contextTlv('a'.repeat(33), Buffer.alloc(0)).value,
      Buffer.from([20, ...Buffer.from('acme-av')]),
    ];
    for (const value of bad) {
      expect(() => decodeFlow(withTlvs([recordsTlv(), { type: TLV_CONTEXT, value }])), value.toString('hex')).toThrow(
        ProxyHeaderMalformedError,
      );
    }
  });

  it('refuses a coproxy TLV that appears twice', () => {
    const twice: readonly (readonly ProxyV2Tlv[])[] = [
      [recordsTlv(), recordsTlv()],
      [recordsTlv(), contextTlv('acme-av', Buffer.from('a')), contextTlv('acme-av', Buffer.from('a'))],
      [pidTlv(Buffer.alloc(4)), recordsTlv(), pidTlv(Buffer.alloc(4))],
    ];
    for (const tlvs of twice) expect(() => decodeFlow(withTlvs(tlvs))).toThrow(ProxyHeaderMalformedError);
  });

  it('ignores reserved types of its range (0xE4 to 0xEF), repeated or not, so later versions can use them', () => {
    const reserved = { type: 0xee, value: Buffer.from('x') };
    expect(decodeFlow(withTlvs([recordsTlv(), reserved]))).toEqual(plainFlow);
    expect(decodeFlow(withTlvs([reserved, recordsTlv(), reserved]))).toEqual(plainFlow);
    const foreign = { type: 0xf0, value: Buffer.from('x') };
    expect(decodeFlow(withTlvs([foreign, recordsTlv(), foreign]))).toEqual(plainFlow);
  });

  it('refuses a header without redirect records', () => {
    for (const tlvs of [[], [pidTlv(Buffer.alloc(4)), contextTlv('acme-av', Buffer.alloc(0))]]) {
      expect(() => decodeFlow(withTlvs(tlvs))).toThrow(ProxyHeaderMalformedError);
    }
  });

  it('refuses a pid TLV of any size but 4 bytes', () => {
    for (const size of [0, 3, 5, 8]) {
      expect(() => decodeFlow(withTlvs([recordsTlv(), pidTlv(Buffer.alloc(size))]))).toThrow(ProxyHeaderMalformedError);
    }
    expect(decodeFlow(withTlvs([recordsTlv(), pidTlv(Buffer.from([0xff, 0xff, 0xff, 0xff]))])).pid).toBe(0xffffffff);
  });

  it('refuses malformed records with RecordsMalformedError', () => {
    const error = attempt(() => decodeFlow(withTlvs([{ type: TLV_RECORDS, value: Buffer.from([2, 0]) }])));
    expect('error' in error && error.error).toBeInstanceOf(RecordsMalformedError);
  });

  it('raises nothing but CoproxyError on arbitrary TLVs after a valid address block', () => {
    const value = fc.oneof(
      fc.uint8Array({ maxLength: 40 }).map((bytes) => Buffer.from(bytes)),
      records.map((r) => encodeRecords(r)),
      fc.tuple(fc.integer({ min: 0, max: 40 }), fc.uint8Array({ maxLength: 40 })).map(([n, rest]) => Buffer.from([n, ...rest])),
    );
    const tlv = fc.record({
      type: fc.oneof(fc.constantFrom(TLV_RECORDS, TLV_CONTEXT, TLV_PID, 0x04, 0xee), fc.integer({ min: 0, max: 0xff })),
      value,
    });
    fc.assert(
      fc.property(fc.array(tlv, { maxLength: 6 }), (tlvs) => {
        const result = attempt(() => decodeFlow(withTlvs(tlvs)));
        if ('error' in result) expect(result.error).toBeInstanceOf(CoproxyError);
        else expect(tlvs.some((t) => t.type === TLV_RECORDS)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('raises nothing but CoproxyError on arbitrary bytes after the signature', () => {
    const data = fc
      .tuple(
        fc.constantFrom(0x11, 0x21),
        fc.uint8Array({ maxLength: 300 }),
        fc.option(fc.integer({ min: 0, max: 0xffff })),
      )
      .map(([transport, body, announced]) => {
        const fixed = Buffer.from([0x21, transport, 0, 0]);
        fixed.writeUInt16BE(announced ?? body.length, 2);
        return Buffer.concat([PROXY_V2_SIGNATURE, fixed, body]);
      });
    fc.assert(
      fc.property(fc.oneof(data, fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.concat([PROXY_V2_SIGNATURE, b]))), (bytes) => {
        const result = attempt(() => {
          const decoded = decodeProxyV2(bytes, LIMIT);
          return decoded === undefined ? undefined : decodeFlowHeader(decoded.header);
        });
        if ('error' in result) expect(result.error).toBeInstanceOf(CoproxyError);
      }),
      { numRuns: 300 },
    );
  });

  it('either refuses a valid flow header with one byte changed with a CoproxyError, or decodes it', () => {
    fc.assert(
      fc.property(flow, fc.nat(), fc.integer({ min: 1, max: 255 }), (original, at, delta) => {
        const encoded = encodeFlowHeader(original);
        // Past the signature: a changed signature byte is covered by the PROXY v2 tests.
        const index = PROXY_V2_SIGNATURE.length + (at % (encoded.length - PROXY_V2_SIGNATURE.length));
        encoded[index] = (encoded[index]! + delta) & 0xff;
        const result = attempt(() => {
          const decoded = decodeProxyV2(encoded, LIMIT);
          return decoded === undefined ? undefined : decodeFlowHeader(decoded.header);
        });
        if ('error' in result) expect(result.error).toBeInstanceOf(CoproxyError);
      }),
      { numRuns: 200 },
    );
  });
});

describe('the flow header authentication TLV (0xE3)', () => {
  const key = createSecretKey(randomBytes(32));
  /** Decodes as the listener does and returns what verification says (undefined: it verifies). */
  const verify = (raw: Buffer, withKey = key) => {
    const decoded = decodeProxyV2(raw, LIMIT);
    if (decoded === undefined) return 'incomplete'; // a changed length byte may ask for more
    return verifyFlowHeaderAuth(raw.subarray(0, decoded.length), decoded.header, withKey);
  };

  it('verifies what was signed with the same key, and decodes to the same flow', () => {
    fc.assert(
      fc.property(flow, (original) => {
        const signed = encodeFlowHeader(original, key);
        expect(verify(signed)).toBeUndefined();
        const tlvs = decodeProxyV2(signed, LIMIT)!.header.tlvs;
        expect(tlvs.at(-1)?.type).toBe(TLV_AUTH);
        expect(tlvs.at(-1)?.value).toHaveLength(AUTH_TAG_BYTES);
        expect(decodeFlowHeader(decodeProxyV2(signed, LIMIT)!.header)).toEqual(original);
      }),
      { numRuns: 100 },
    );
  });

  it('fails for any single byte changed after the signature, and for another key', () => {
    fc.assert(
      fc.property(flow, fc.nat(), fc.integer({ min: 1, max: 255 }), (original, at, delta) => {
        const signed = encodeFlowHeader(original, key);
        expect(verify(signed, createSecretKey(randomBytes(32)))).toBe('bad-credential');
        const index = PROXY_V2_SIGNATURE.length + (at % (signed.length - PROXY_V2_SIGNATURE.length));
        signed[index] = (signed[index]! + delta) & 0xff;
        const result = attempt(() => verify(signed));
        // A change may break the framing (a CoproxyError) or leave it parseable: never verified.
        if ('error' in result) expect(result.error).toBeInstanceOf(CoproxyError);
        else expect(result.value).not.toBeUndefined();
      }),
      { numRuns: 300 },
    );
  });

  it('says a header without the TLV has no credential, and one where it is not last a bad one', () => {
    expect(verify(encodeFlowHeader(plainFlow))).toBe('no-credential');
    const signed = encodeFlowHeader(plainFlow, key);
    const tlvs = decodeProxyV2(signed, LIMIT)!.header.tlvs;
    const moved = encodeProxyV2({ source: plainFlow.source, destination: plainFlow.destination, tlvs: [tlvs.at(-1)!, ...tlvs.slice(0, -1)] });
    expect(verify(moved)).toBe('bad-credential');
    const appended = encodeProxyV2({ source: plainFlow.source, destination: plainFlow.destination, tlvs: [...tlvs, { type: 0x04, value: Buffer.alloc(0) }] });
    expect(verify(appended)).toBe('bad-credential');
    const short = encodeProxyV2({ source: plainFlow.source, destination: plainFlow.destination, tlvs: [...tlvs.slice(0, -1), { type: TLV_AUTH, value: Buffer.alloc(31) }] });
    expect(verify(short)).toBe('bad-credential');
  });
});
