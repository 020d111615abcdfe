import { describe, expect, it } from 'vitest';
import { TlsErrorCode } from './errors.js';
import { MAX_PACKETS_PER_DATAGRAM, QuicInitialError, QuicInitialReader } from './quic-initial.js';
import { buildInitial, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

/**
 * Review: every coalesced Initial costs the reader an AES-GCM decryption, and nothing
 * bounded how many one datagram held: 64 KiB of 40-byte Initials is some 1600 decryptions
 * for one datagram, 16 datagrams a flow, while every other flow waits.
 */
describe('coalesced packets in one datagram (review)', () => {
  const dcid = Buffer.alloc(8, 7);
  const hello = sampleHelloMessage('shop.example', ['h3']);
  /** `count` Initials in one datagram, the hello cut across them, padded to 1200 bytes in the last. */
  const coalesced = (count: number): Buffer => {
    const step = Math.ceil(hello.length / count);
    const packets = Array.from({ length: count }, (_, i) => buildInitial({ dcid, packetNumber: i, frames: [cryptoFrame(i * step, hello.subarray(i * step, (i + 1) * step))] }));
    const size = packets.reduce((sum, p) => sum + p.length, 0);
    const last = packets.length - 1;
    const lastStep = hello.subarray(last * step, (last + 1) * step);
    packets[last] = buildInitial({ dcid, packetNumber: last, frames: [cryptoFrame(last * step, lastStep)], payloadLength: Math.max(0, 1200 - size) + lastStep.length + 4 });
    return Buffer.concat(packets);
  };

  it(`reads a hello across ${MAX_PACKETS_PER_DATAGRAM} coalesced Initials`, () => {
    const result = new QuicInitialReader().push(coalesced(MAX_PACKETS_PER_DATAGRAM));
    expect(result.done && result.hello.serverName).toBe('shop.example');
  });

  it(`refuses a datagram of more than ${MAX_PACKETS_PER_DATAGRAM} coalesced Initials, as malformed`, () => {
    const read = (): unknown => new QuicInitialReader().push(coalesced(MAX_PACKETS_PER_DATAGRAM + 1));
    expect(read).toThrow(QuicInitialError);
    expect(read).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicMalformed, message: expect.stringMatching(/long-header packets coalesced/) as unknown }));
  });
});
