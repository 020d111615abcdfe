import pino from 'pino';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { TlsProxyMetrics } from './metrics.js';
import { compilePolicy, parsePolicy } from './policy.js';
import { type QuicFlow, type QuicOnwardSocket, serveQuicFlow } from './quic-flow.js';
import { Reporter } from './reporter.js';
import { buildInitialDatagram, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

/**
 * Review: once a QUIC flow is relayed, what the client sends next on the same 5-tuple must
 * not carry a ClientHello the reader never judged. A server demultiplexes by DCID (a new
 * DCID is a new connection) and drops a packet whose number it already processed (RFC 9000
 * §12.3); the reader did neither, and read nothing after its decision.
 */

class Onward implements QuicOnwardSocket {
  readonly sent: Buffer[] = [];
  readonly datagrams$ = new Subject<Buffer>().asObservable();
  send(payload: Buffer): void {
    this.sent.push(Buffer.from(payload));
  }
  close(): void {}
}

class Flow implements QuicFlow {
  readonly transport = 'udp' as const;
  readonly id = 'flow-review';
  readonly originalDestination = { address: '10.200.0.1', port: 443, family: 4 as const };
  readonly source = { address: '10.200.0.2', port: 50_000 };
  readonly client = new Subject<Buffer>();
  readonly datagrams$ = this.client.asObservable();
  readonly onward = new Onward();
  readonly calls: string[] = [];
  send(): void {}
  connectOnward(): Promise<QuicOnwardSocket> {
    this.calls.push('connect');
    return Promise.resolve(this.onward);
  }
  reject(): void {
    this.calls.push('reject');
  }
  close(): void {
    this.calls.push('close');
  }
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function serve() {
  const flow = new Flow();
  const reporter = new Reporter(new TlsProxyMetrics(), pino({ level: 'silent' }), () => undefined);
  const policy = compilePolicy(parsePolicy({ default: 'splice', rules: [{ name: 'no-blocked', when: { sni: 'blocked.example' }, action: 'block' }] }));
  const handle = serveQuicFlow(flow, { policy, unrecognised: 'block', reporter });
  return { flow, handle };
}

const allowed = sampleHelloMessage('allowed.example', ['h3']);
const blocked = sampleHelloMessage('blocked.example', ['h3']);

describe('a relayed QUIC flow and the Initials that follow its decision (review)', () => {
  it('does not relay a second connection (another DCID, another hello) on the same flow', async () => {
    const { flow } = serve();
    flow.client.next(buildInitialDatagram({ dcid: Buffer.alloc(8, 1), packetNumber: 0, frames: [cryptoFrame(0, allowed)] }));
    await tick();
    expect(flow.calls).toEqual(['connect']);
    const second = buildInitialDatagram({ dcid: Buffer.alloc(8, 2), packetNumber: 0, frames: [cryptoFrame(0, blocked)] });
    flow.client.next(second);
    await tick();
    expect(flow.onward.sent.some((datagram) => datagram.equals(second))).toBe(false);
    expect(flow.calls).toEqual(['connect', 'reject']);
  });

  it('does not relay CRYPTO bytes that differ from the hello it judged (a duplicate packet number the server dropped)', async () => {
    const { flow } = serve();
    expect(allowed.length).toBe(blocked.length);
    let k = 0;
    while (allowed[k] === blocked[k]) k++;
    const dcid = Buffer.alloc(8, 3);
    // Packet 0 holds the common start; a second packet 0 (which a server discards as a
    // duplicate) completes it as allowed.example; packet 1 completes it as blocked.example.
    flow.client.next(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, allowed.subarray(0, k))] }));
    flow.client.next(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(k, allowed.subarray(k))] }));
    await tick();
    expect(flow.calls).toEqual(['connect']);
    const swap = buildInitialDatagram({ dcid, packetNumber: 1, frames: [cryptoFrame(k, blocked.subarray(k))] });
    flow.client.next(swap);
    await tick();
    expect(flow.onward.sent.some((datagram) => datagram.equals(swap))).toBe(false);
    expect(flow.calls).toEqual(['connect', 'reject']);
  });

  it('still relays the client retransmitting its hello, the same bytes under a new packet number', async () => {
    const { flow } = serve();
    const dcid = Buffer.alloc(8, 4);
    const first = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, allowed)] });
    flow.client.next(first);
    await tick();
    const again = buildInitialDatagram({ dcid, packetNumber: 1, frames: [cryptoFrame(0, allowed)] });
    const shortHeader = Buffer.from([0x40, 1, 2, 3, 4, 5, 6, 7, 8]);
    flow.client.next(again);
    flow.client.next(shortHeader);
    await tick();
    expect(flow.onward.sent).toEqual([first, again, shortHeader]);
    expect(flow.calls).toEqual(['connect']);
  });
});
