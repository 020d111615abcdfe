import { classifyFirstBytes } from '@coproxy/proxy-tls';
import { describe, expect, it } from 'vitest';
import { UDP_KINDS, UDP_MAX_DATAGRAM, payload, planFlows } from './flows.js';

describe('flows', () => {
  it('gives every raw TCP flow a payload that neither vendor can take for TLS or an HTTP request', () => {
    // Before, the bytes were all random: one flow in 256 started with 22 (a TLS record), and
    // some with capitals and a space (a request line); 600 flows failed most seeds.
    for (let seed = 1; seed <= 20; seed++) {
      const flows = planFlows(
        Array.from({ length: 600 }, (_, i) => 20_000 + i),
        seed,
        false,
      ).filter((flow) => flow.kind === 'tcp');
      for (const flow of flows) expect({ seed, flow: flow.index, kind: classifyFirstBytes(payload(flow, seed, 0).subarray(0, 64)) }).toEqual({ seed, flow: flow.index, kind: 'unknown' });
    }
  });

  it('gives every UDP datagram a size that fits one IPv4 datagram on a 1500-byte link and a first byte that is no QUIC long header', () => {
    const flows = planFlows(
      Array.from({ length: 400 }, (_, i) => 20_000 + i),
      3,
      false,
      { kinds: UDP_KINDS },
    ).filter((flow) => flow.kind === 'udp');
    expect(flows).toHaveLength(100);
    for (const flow of flows) {
      expect(flow.requests).toBe(8);
      for (let n = 0; n < flow.requests; n++) {
        const datagram = payload(flow, 3, n);
        expect(datagram.length).toBeGreaterThanOrEqual(1);
        expect(datagram.length).toBeLessThanOrEqual(UDP_MAX_DATAGRAM);
        // A QUIC long header (an Initial) sets 0x80; coproxy-tls then reads it as QUIC.
        expect(datagram[0]! & 0x80).toBe(0);
      }
    }
  });
});
