import { createSecretKey, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoproxyError } from '../../model/errors.js';
import { RedirectRecords } from '../../model/redirect-records.js';
import { decodeDatagram, encodeDatagramHeader } from './datagram-header.js';
import type { FlowHeader } from './flow-header.js';

const key = createSecretKey(randomBytes(32));
const options = { redirectorId: 'acme', maxHeaderBytes: 4096, peerUid: () => undefined };

const flow: fc.Arbitrary<FlowHeader> = fc
  .record({
    v6: fc.boolean(),
    ids: fc.uniqueArray(fc.stringMatching(/^[a-z0-9-]{1,32}$/), { minLength: 1, maxLength: 16 }),
    sourcePort: fc.integer({ min: 0, max: 65535 }),
    destinationPort: fc.integer({ min: 1, max: 65535 }),
    pid: fc.option(fc.integer({ min: 1, max: 2 ** 31 - 1 }), { nil: undefined }),
    source4: fc.ipV4(),
    destination4: fc.ipV4(),
  })
  .map(({ v6, ids, sourcePort, destinationPort, pid, source4, destination4 }) => ({
    source: { address: v6 ? `fd00::${sourcePort.toString(16)}` : source4, port: sourcePort },
    destination: { address: v6 ? '2001:db8::1' : destination4, port: destinationPort, family: v6 ? (6 as const) : (4 as const) },
    records: ids.reduce((records, id) => records.withRedirect(id), RedirectRecords.empty),
    ...(pid !== undefined && { pid }),
  }));

describe('embedded datagram header', () => {
  it('round-trips every flow header and payload, with the DGRAM transport byte', () => {
    fc.assert(
      fc.property(flow, fc.uint8Array({ maxLength: 2048 }), (header, payload) => {
        const encoded = encodeDatagramHeader(header, key);
        expect([0x12, 0x22]).toContain(encoded[13]);
        const decoded = decodeDatagram(Buffer.concat([encoded, payload]), key, options);
        expect(decoded.payload).toEqual(Buffer.from(payload));
        expect(decoded.flow.destination).toEqual(header.destination);
        expect(decoded.flow.records.redirectedBy).toEqual(header.records.redirectedBy);
        expect(decoded.flow.pid).toEqual(header.pid);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses any altered header byte with a typed error, never accepting it or throwing anything else', () => {
    fc.assert(
      fc.property(flow, fc.nat(), fc.integer({ min: 1, max: 255 }), (header, at, flip) => {
        const encoded = encodeDatagramHeader(header, key);
        const altered = Buffer.from(encoded);
        const index = at % encoded.length;
        altered[index] = altered[index]! ^ flip;
        let thrown: unknown;
        try {
          decodeDatagram(Buffer.concat([altered, Buffer.from('payload')]), key, options);
        } catch (error) {
          thrown = error;
        }
        expect(thrown).toBeInstanceOf(CoproxyError);
      }),
      { numRuns: 500 },
    );
  });

  it('refuses arbitrary bytes with a typed error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        expect(() => decodeDatagram(Buffer.from(bytes), key, options)).toThrow(CoproxyError);
      }),
      { numRuns: 500 },
    );
  });
});
