import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { connectDatagram } from '@coproxy/core';
import type { Subscription } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { QuicHandshake, TlsProxyEvent } from './events.js';
import type { PolicyFile } from './policy.js';
import { createTlsProxy } from './proxy.js';
import { testCa, tempDir, uniqueId, until, within } from './test-support/harness.js';
import { recordingUdpServer } from './test-support/udp-flow.js';

// createTlsProxy takes UDP flows from core's redirector (embedded backend: an app sends
// through connectDatagram, as it would through connect() for TCP) and serves them as QUIC.
// Chromium's captured Initials (test-fixtures/quic/) are the client's datagrams; the origin
// is a UDP socket that records what reaches it. No root, no browser: the kernel tests do
// that (quic-fallback.kernel.test.ts).

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic');
const CHROMIUM = fs
  .readFileSync(path.join(fixtures, 'chromium-initials.hex'), 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => Buffer.from(line, 'hex'));

/** Prometheus text as `name{labels}` → value. */
function samples(text: string): Map<string, number> {
  const map = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    map.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return map;
}

/** Chromium's Initials sent through a TLS proxy with `policy` on UDP/<origin's port>; what reached the origin, what the proxy said. */
async function sendThroughProxy(policy: PolicyFile) {
  using registry = tempDir('coproxy-tls-registry-');
  using ca = await testCa('coproxy-tls QUIC test CA');
  await using origin = await recordingUdpServer((datagram) => Buffer.concat([Buffer.from('answer to '), datagram.subarray(0, 16)]));
  // TCP on a port nobody dials here; UDP on the origin's port.
  const proxy = createTlsProxy({ id: uniqueId('tls-quic'), priority: 1, registry: registry.path, match: { ports: [1], udpPorts: [origin.port] }, policy, ca });
  const quicHandshakes: QuicHandshake[] = [];
  const events: TlsProxyEvent[] = [];
  const subscriptions: Subscription[] = [proxy.quicHandshakes$.subscribe((h) => quicHandshakes.push(h)), proxy.events$.subscribe((e) => events.push(e))];
  try {
    await within(proxy.listening(), 20_000, 'the proxy to listen');
    const client = await within(connectDatagram({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 5000, 'the client socket');
    const answers: Buffer[] = [];
    client.datagrams$.subscribe({ next: (answer) => answers.push(answer), error: () => undefined });
    for (const datagram of CHROMIUM) client.send(datagram);
    await until(() => quicHandshakes.length === 1, 10_000, 'the QUIC decision');
    if (quicHandshakes[0]!.action === 'relay') await until(() => answers.length === CHROMIUM.length, 10_000, 'the answers through the relay');
    const metrics = samples(await proxy.metrics.text());
    // Closing the proxy ends its QUIC flows: each flow's closed event is reported before events$ completes.
    await proxy.close();
    client.close();
    return { quicHandshake: quicHandshakes[0]!, received: [...origin.received], answers, metrics, events };
  } finally {
    for (const subscription of subscriptions) subscription.unsubscribe();
    await proxy.close();
  }
}

describe('createTlsProxy with UDP flows (QUIC), embedded backend', () => {
  it('relays a QUIC flow its policy splices: Chromium’s Initials reach the destination byte for byte, the answers come back, and it is counted', async () => {
    const result = await sendThroughProxy({ default: 'bump', rules: [{ name: 'h3', when: { quic: true }, action: 'splice' }] });

    expect(result.quicHandshake).toMatchObject({ transport: 'quic', sni: 'quic.test', action: 'relay', rule: 'h3', quicVersion: 'v1', alpn: ['h3'] });
    expect(result.quicHandshake.ja4).toMatch(/^q13d/);
    expect(result.received).toEqual(CHROMIUM);
    expect(result.answers).toEqual(CHROMIUM.map((datagram) => Buffer.concat([Buffer.from('answer to '), datagram.subarray(0, 16)])));
    expect(result.metrics.get('coproxy_tls_quic_flows_total{action="relay"}')).toBe(1);
    expect(result.metrics.get('coproxy_tls_udp_flows_total{state="NotRedirected"}')).toBe(1);
    expect(result.events).toContainEqual({ type: 'quic-handshake', handshake: result.quicHandshake });
    // The flow ended by the proxy's close(), reported with what it carried.
    expect(result.events).toContainEqual(
      expect.objectContaining({ type: 'closed', connectionId: result.quicHandshake.flowId, transport: 'udp', endedBy: 'closed', datagramsFromClient: CHROMIUM.length }),
    );
  });

  it('blocks a QUIC flow under a bump policy, with the hello’s SNI and q-JA4 in its handshake event: nothing reaches the destination', async () => {
    const result = await sendThroughProxy({ default: 'bump' });

    expect(result.quicHandshake).toMatchObject({ transport: 'quic', sni: 'quic.test', action: 'block', rule: undefined });
    expect(result.quicHandshake.note).toContain('falls back to TCP');
    expect(result.quicHandshake.ja4).toMatch(/^q13d/);
    expect(result.received).toEqual([]);
    expect(result.answers).toEqual([]);
    expect(result.metrics.get('coproxy_tls_quic_flows_total{action="block"}')).toBe(1);
    expect(result.metrics.has('coproxy_tls_quic_flows_total{action="relay"}')).toBe(false);
    expect(result.events).toContainEqual(expect.objectContaining({ type: 'closed', connectionId: result.quicHandshake.flowId, transport: 'udp', endedBy: 'rejected' }));
  });

  it.skipIf(process.platform === 'win32')('takes no UDP by default on WFP, which redirects none: off Windows only the backend is missing, while an explicit udpPorts is refused', () => {
    // The default match reaches core's checks without udpPorts: what fails is the platform.
    expect(() => createTlsProxy({ id: uniqueId('tls-wfp'), priority: 1, backend: 'wfp' })).toThrow(expect.objectContaining({ code: 'COPROXY_BACKEND_UNAVAILABLE' }));
    expect(() => createTlsProxy({ id: uniqueId('tls-wfp'), priority: 1, backend: 'wfp', match: { ports: [443], udpPorts: [443] } })).toThrow(
      expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'match.udpPorts' }),
    );
  });
});
