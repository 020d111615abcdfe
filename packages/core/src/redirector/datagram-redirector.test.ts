import type { Observable } from 'rxjs';
import { describe, expect, expectTypeOf, it } from 'vitest';
import type { AcceptedConnection } from './accepted-connection.js';
import type { AcceptedDatagramFlow } from './datagram-flow.js';
import { createRedirector } from './redirector.js';

describe('redirector with UDP ports', () => {
  it('types accepted$ as TCP only unless the rule names UDP ports', async () => {
    const tcp = createRedirector({ id: 'types-tcp', priority: 1, match: { ports: [443] } });
    expectTypeOf(tcp.accepted$).toEqualTypeOf<Observable<AcceptedConnection>>();
    await tcp.close();
    // Typed only: a redirector is created (nothing installed until subscribed), then closed.
    const both = createRedirector({ id: 'types-udp', priority: 1, backend: 'nftables', match: { udpPorts: [443] } });
    expectTypeOf(both.accepted$).toEqualTypeOf<Observable<AcceptedConnection | AcceptedDatagramFlow>>();
    await both.close();
  });

  it('refuses UDP ports on a backend that does not redirect UDP, instead of ignoring them', () => {
    expect(() => createRedirector({ id: 'udp-wfp', priority: 1, backend: 'wfp', match: { udpPorts: [443] } })).toThrow(
      expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'match.udpPorts' }),
    );
  });

  it('validates the UDP limits', () => {
    const base = { id: 'udp-limits', priority: 1, backend: 'nftables', match: { udpPorts: [443] } } as const;
    expect(() => createRedirector({ ...base, maxUdpFlows: 0 })).toThrow(expect.objectContaining({ option: 'maxUdpFlows' }));
    expect(() => createRedirector({ ...base, udpIdleTimeoutMs: -1 })).toThrow(expect.objectContaining({ option: 'udpIdleTimeoutMs' }));
  });
});
