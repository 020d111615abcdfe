import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { TlsOwnEvent } from './events.js';
import { TlsProxyMetrics } from './metrics.js';
import { type PolicyFile, compilePolicy, parsePolicy } from './policy.js';
import { serveQuicFlow } from './quic-flow.js';
import { Reporter } from './reporter.js';
import { until } from './test-support/cli-process.js';
import { loopbackFlowListener, recordingUdpServer } from './test-support/udp-flow.js';

// Chromium's captured Initials replayed through real UDP sockets on loopback: a client
// socket, the vendor's flow (a stand-in for core's UDP flows: test-support/udp-flow.ts),
// and an origin socket that records what reaches it and answers. No QUIC server is needed:
// the relay is checked byte for byte both ways.

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic');
const CHROMIUM = fs
  .readFileSync(path.join(fixtures, 'chromium-initials.hex'), 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => Buffer.from(line, 'hex'));

async function replay(policy: PolicyFile) {
  await using origin = await recordingUdpServer((datagram) => Buffer.concat([Buffer.from('answer to '), datagram.subarray(0, 16)]));
  await using listener = await loopbackFlowListener({ address: '127.0.0.1', port: origin.port });
  const client = dgram.createSocket('udp4');
  const answers: Buffer[] = [];
  client.on('message', (message) => answers.push(message));
  await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', () => resolve()));
  try {
    const events: TlsOwnEvent[] = [];
    const reporter = new Reporter(new TlsProxyMetrics(), pino({ level: 'silent' }), (event) => events.push(event));
    const later = Buffer.from('5f0011223344556677', 'hex'); // a short-header packet, after the handshake would have started
    for (const datagram of CHROMIUM) client.send(datagram, listener.port, '127.0.0.1');
    const flow = await listener.flow;
    const handle = serveQuicFlow(flow, { policy: compilePolicy(parsePolicy(policy)), unrecognised: 'block', reporter });
    await until(() => events.some((event) => event.type === 'quic-handshake'), 10_000, 'the decision');
    const decided = events.find((event) => event.type === 'quic-handshake');
    if (decided?.type === 'quic-handshake' && decided.handshake.action === 'block') {
      return { outcome: await handle.done, received: [...origin.received], answers, events, rejected: flow.rejected };
    }
    await until(() => origin.received.length >= CHROMIUM.length, 10_000, 'the Initials at the origin');
    client.send(later, listener.port, '127.0.0.1');
    await until(() => origin.received.length === CHROMIUM.length + 1 && answers.length === CHROMIUM.length + 1, 10_000, 'the relay both ways');
    handle.close();
    return { outcome: await handle.done, received: [...origin.received], answers, events, rejected: flow.rejected, later };
  } finally {
    client.close();
  }
}

describe('a QUIC flow relayed over real UDP sockets', () => {
  it('relays Chromium’s Initials and what follows to the destination byte for byte, and the answers back', async () => {
    const result = await replay({ default: 'bump', rules: [{ name: 'h3', when: { quic: true }, action: 'splice' }] });
    expect(result.outcome).toEqual({ kind: 'ended' });
    expect(result.received).toEqual([...CHROMIUM, result.later]);
    expect(result.answers).toEqual(result.received.map((datagram) => Buffer.concat([Buffer.from('answer to '), datagram.subarray(0, 16)])));
    expect(result.events).toContainEqual({ type: 'quic-handshake', handshake: expect.objectContaining({ sni: 'quic.test', action: 'relay', rule: 'h3' }) as unknown });
  });

  it('blocks them under a bump policy: nothing reaches the destination', async () => {
    const result = await replay({ default: 'bump' });
    expect(result.outcome).toMatchObject({ kind: 'blocked' });
    expect(result.rejected).toContain('falls back to TCP');
    expect(result.received).toEqual([]);
  });
});
