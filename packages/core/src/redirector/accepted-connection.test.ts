import net from 'node:net';
import { describe, expect, it, vi } from 'vitest';
import type { AcceptedFlow } from '../backends/backend.js';
import { RedirectRecords } from '../model/redirect-records.js';
import { Accepted } from './accepted-connection.js';
import { admits, compileMatch, type Destination } from '../model/match-rule.js';
import type { RedirectorEventInit } from './redirector-events.js';

function flowTo(destination: Destination, dial: AcceptedFlow['connectOnward']): AcceptedFlow {
  return {
    socket: new net.Socket(),
    originalDestination: destination,
    source: { address: '127.0.0.1', port: 40000 },
    records: RedirectRecords.empty.withRedirect('guard'),
    context: undefined,
    framingBytes: 0,
    connectOnward: dial,
  };
}

describe('connectOnward() and the match rule', () => {
  it('refuses a destination outside the rule without dialling, and reports it as onward-failed', async () => {
    const dial = vi.fn<AcceptedFlow['connectOnward']>();
    const events: RedirectorEventInit[] = [];
    const destination: Destination = { address: '192.0.2.7', port: 22, family: 4 };
    const connection = new Accepted('guard#1', 'guard', compileMatch({ ports: [80, 443] }), flowTo(destination, dial), (e) => events.push(e));

    await expect(connection.connectOnward()).rejects.toMatchObject({
      code: 'COPROXY_DESTINATION_OUTSIDE_RULE',
      redirectorId: 'guard',
      destination,
    });
    expect(dial).not.toHaveBeenCalled();
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ type: 'onward-failed', connectionId: 'guard#1', error: { code: 'COPROXY_DESTINATION_OUTSIDE_RULE' } });
    connection.socket.destroy();
  });
});

describe('admits()', () => {
  it('reads an IPv4 destination and its IPv4-mapped spelling as one endpoint, and nothing more', () => {
    const v6Only = compileMatch({ family: 6, ports: [80] });
    // A PROXY header decodes ::ffff:192.0.2.1 (which the app's rule matched) to plain IPv4.
    expect(admits(v6Only, { address: '192.0.2.1', port: 80, family: 4 })).toBe(true);
    expect(admits(v6Only, { address: '192.0.2.1', port: 81, family: 4 })).toBe(false);
    const hosts = compileMatch({ hosts: ['192.0.2.0/24'] });
    expect(admits(hosts, { address: '192.0.2.9', port: 1, family: 4 })).toBe(true);
    expect(admits(hosts, { address: '198.51.100.1', port: 1, family: 4 })).toBe(false);
    expect(admits(compileMatch({ family: 4 }), { address: '2001:db8::1', port: 1, family: 6 })).toBe(false);
  });
});
