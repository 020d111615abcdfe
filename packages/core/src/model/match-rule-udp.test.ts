import { describe, expect, it } from 'vitest';
import { admits, compileMatch } from './match-rule.js';

const to = (port: number, address = '192.0.2.1') => ({ address, port, family: 4 as const });

describe('match rule with UDP ports', () => {
  it('keeps every existing rule TCP only', () => {
    for (const rule of [{}, { ports: [53] }, { hosts: ['192.0.2.0/24'] }, { family: 4 as const }]) {
      const match = compileMatch(rule);
      expect(match.matches(to(53))).toBe(true);
      expect(match.matches(to(53), 'udp')).toBe(false);
    }
  });

  it('takes UDP on the named ports only, and no TCP when it names no TCP ports', () => {
    const match = compileMatch({ udpPorts: [443, [5000, 5010]] });
    expect([443, 5000, 5010, 444, 4999].map((port) => match.matches(to(port), 'udp'))).toEqual([true, true, true, false, false]);
    expect([443, 80].map((port) => match.matches(to(port)))).toEqual([false, false]);
  });

  it('takes both transports, each on its own ports, when it names both', () => {
    const match = compileMatch({ ports: [443], udpPorts: [443, 53] });
    expect([match.matches(to(443)), match.matches(to(53)), match.matches(to(53), 'udp'), match.matches(to(80), 'udp')]).toEqual([true, false, true, false]);
  });

  it('applies hosts and family to UDP as to TCP, mapped IPv4 included', () => {
    const match = compileMatch({ udpPorts: [443], hosts: ['198.51.100.0/24'] });
    expect(match.matches(to(443, '198.51.100.7'), 'udp')).toBe(true);
    expect(match.matches(to(443, '192.0.2.1'), 'udp')).toBe(false);
    const mapped = compileMatch({ udpPorts: [443], family: 6 });
    expect(admits(mapped, to(443, '192.0.2.1'), 'udp')).toBe(true);
    expect(admits(mapped, to(443, '192.0.2.1'))).toBe(false);
  });

  it('refuses malformed UDP port lists with the option named', () => {
    expect(() => compileMatch({ udpPorts: [] })).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'match.udpPorts' }));
    expect(() => compileMatch({ udpPorts: [0] })).toThrow(expect.objectContaining({ option: 'match.udpPorts[0]' }));
    expect(() => compileMatch({ udpPorts: [[10, 5]] })).toThrow(expect.objectContaining({ option: 'match.udpPorts[0]' }));
    expect(() => compileMatch({ udpPorts: 53 as unknown as number[] })).toThrow(expect.objectContaining({ option: 'match.udpPorts' }));
  });

  it('freezes a copy of the UDP ports', () => {
    const ports: [number, number][] = [[1000, 1001]];
    const match = compileMatch({ udpPorts: ports });
    ports[0]![1] = 2000;
    expect(match.rule.udpPorts).toEqual([[1000, 1001]]);
    expect(match.matches(to(1500), 'udp')).toBe(false);
  });
});
