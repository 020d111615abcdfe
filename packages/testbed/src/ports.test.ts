import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { prng } from './flows.js';
import { FALLBACK_EPHEMERAL, LOWEST_PORT, choosePorts, ephemeralRange, nextFreePort, parsePortRange, portList, portsOutside } from './ports.js';

describe('origin ports', () => {
  it('reads the kernel’s ephemeral range where Linux has one, and falls back to the IANA dynamic range elsewhere', () => {
    expect(parsePortRange('32768\t60999\n')).toEqual({ from: 32_768, to: 60_999 });
    expect(parsePortRange('nonsense')).toBeUndefined();
    expect(parsePortRange('60999 32768')).toBeUndefined();
    const { range: here, source } = ephemeralRange();
    if (fs.existsSync('/proc/sys/net/ipv4/ip_local_port_range')) {
      expect(here).toEqual(parsePortRange(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'latin1')));
      expect(source).toBe('net.ipv4.ip_local_port_range');
    } else {
      expect(here).toEqual(FALLBACK_EPHEMERAL);
    }
  });

  it('chooses every port outside the ephemeral range, above 1023, without repeats, for any range and count', () => {
    // Seeded cases (the package has no fast-check): ranges at the edges and at random.
    const random = prng(14);
    const cases = [
      { from: 32_768, to: 60_999 },
      { from: 1024, to: 65_000 },
      { from: 1, to: 65_534 },
      { from: 49_152, to: 65_535 },
      { from: 1025, to: 1025 },
      ...Array.from({ length: 200 }, () => {
        const a = 1 + Math.floor(random() * 65_535);
        const b = 1 + Math.floor(random() * 65_535);
        return { from: Math.min(a, b), to: Math.max(a, b) };
      }),
    ];
    for (const ephemeral of cases) {
      const outside = portsOutside(ephemeral);
      const room = outside.reduce((sum, r) => sum + r.to - r.from + 1, 0);
      if (room === 0) continue;
      const count = Math.min(1 + Math.floor(random() * 12_000), room);
      const ports = choosePorts(count, outside, Math.floor(random() * 1000));
      expect(ports).toHaveLength(count);
      expect(new Set(ports).size).toBe(count);
      const wrong = ports.filter((port) => port < LOWEST_PORT || port > 65_535 || (port >= ephemeral.from && port <= ephemeral.to));
      expect({ ephemeral, wrong }).toEqual({ ephemeral, wrong: [] });
    }
  });

  it('replaces a port with the next one outside the range that nothing holds', () => {
    const outside = portsOutside({ from: 32_768, to: 60_999 });
    expect(outside).toEqual([
      { from: 1024, to: 32_767 },
      { from: 61_000, to: 65_535 },
    ]);
    expect(nextFreePort(outside, new Set([2000, 2001, 2002]), 2000)).toBe(2003);
    expect(nextFreePort(outside, new Set([32_767]), 32_766)).toBe(61_000); // over the ephemeral range, never into it
    expect(nextFreePort(outside, new Set(), 65_535)).toBe(1024);
  });

  it('writes ports as a vendor’s --ports list', () => {
    expect(portList([20_002, 20_000, 20_001, 20_005, 31_000, 31_001])).toBe('20000-20002,20005,31000-31001');
  });
});
