import pino from 'pino';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { TlsOwnEvent } from './events.js';
import { TlsProxyMetrics } from './metrics.js';
import { compilePolicy, parsePolicy } from './policy.js';
import { type QuicFlow, type QuicFlowOptions, type QuicOnwardSocket, serveQuicFlow } from './quic-flow.js';
import { Reporter } from './reporter.js';
import { buildInitial, buildInitialDatagram, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

/**
 * An attacker's pass over the QUIC flows of coproxy-tls (issue #18): what a flood of flows
 * that never finish their hello costs the proxy. Every flow is judged only once its hello
 * is whole, so until then what it sent is held; UDP flows are cheap to open (one datagram
 * each, any number of source ports), so what they hold must be bounded across flows, not
 * only per flow.
 */

class Onward implements QuicOnwardSocket {
  readonly sent: Buffer[] = [];
  readonly datagrams$ = new Subject<Buffer>().asObservable();
  send(payload: Buffer): void {
    this.sent.push(payload);
  }
  close(): void {}
}

class Flow implements QuicFlow {
  readonly transport = 'udp' as const;
  readonly originalDestination = { address: '10.200.0.1', port: 443, family: 4 as const };
  readonly source;
  readonly client = new Subject<Buffer>();
  readonly datagrams$ = this.client.asObservable();
  readonly onward = new Onward();
  readonly calls: string[] = [];
  constructor(readonly id: string) {
    this.source = { address: '10.200.0.2', port: 40_000 + Number(id.split('#')[1]) };
  }
  send(): void {}
  connectOnward(): Promise<QuicOnwardSocket> {
    this.calls.push('connect');
    return Promise.resolve(this.onward);
  }
  reject(): void {
    this.calls.push('reject');
    this.client.complete();
  }
  close(): void {
    this.calls.push('close');
    this.client.complete();
  }
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

function proxyLike(extra: Partial<QuicFlowOptions> = {}) {
  const events: TlsOwnEvent[] = [];
  const reporter = new Reporter(new TlsProxyMetrics(), pino({ level: 'silent' }), (event) => events.push(event));
  const policy = compilePolicy(parsePolicy({ default: 'splice', rules: [{ name: 'no-blocked', when: { sni: 'blocked.example' }, action: 'block' }] }));
  // One options object for every flow, as proxy.ts passes it.
  const options: QuicFlowOptions = { policy, unrecognised: 'relay', reporter, ...extra };
  let n = 0;
  return {
    events,
    serve() {
      const flow = new Flow(`attack#${n++}`);
      return { flow, handle: serveQuicFlow(flow, options) };
    },
  };
}

/**
 * One 1,200-byte Initial whose CRYPTO frames announce a 65,000-byte ClientHello and carry
 * its first 4 bytes and one byte near its end: valid QUIC (the keys are public), a hello
 * not yet whole, so the flow waits for the rest.
 */
function farCryptoInitial(dcidByte: number): Buffer {
  const header = Buffer.from([0x01, 0x00, 0xfd, 0xe8]); // ClientHello, 65,000 bytes
  return buildInitialDatagram({ dcid: Buffer.alloc(8, dcidByte), packetNumber: 0, frames: [cryptoFrame(0, header), cryptoFrame(64_000, Buffer.from([0x42]))] });
}

describe('QUIC flows that never finish their hello, many at once (attack)', () => {
  it('holds no more memory for them than the budget across flows, however far into the hello their CRYPTO bytes land', async () => {
    let used = 0;
    let peak = 0;
    const limit = 4 * 1024 * 1024;
    const budget = {
      take(bytes: number): boolean {
        if (used + bytes > limit) return false;
        used += bytes;
        peak = Math.max(peak, used);
        return true;
      },
      give(bytes: number): void {
        used -= bytes;
      },
    };
    const proxy = proxyLike({ budget });
    const datagram = farCryptoInitial(7); // one buffer for every flow: what grows is the proxy's own
    const flows = [];
    const before = process.memoryUsage().arrayBuffers;
    for (let i = 0; i < 200; i++) {
      const served = proxy.serve();
      served.flow.client.next(datagram);
      flows.push(served);
    }
    await tick();
    const grown = process.memoryUsage().arrayBuffers - before;
    // 200 flows × 1,200 bytes were sent; before the bound each held ~130 KB (26 MB).
    expect(grown).toBeLessThan(limit + 2 * 1024 * 1024);
    expect(peak).toBeLessThanOrEqual(limit);
    // The flows past the budget were rejected (the client falls back to TCP), never relayed unread.
    const rejected = flows.filter(({ flow }) => flow.calls.includes('reject'));
    expect(rejected.length).toBeGreaterThan(100);
    expect(flows.every(({ flow }) => !flow.calls.includes('connect'))).toBe(true);
    const refusals = proxy.events.filter((event) => event.type === 'hello-rejected');
    expect(refusals).toHaveLength(rejected.length);
    expect(new Set(refusals.map((event) => (event as { code: string }).code))).toEqual(new Set(['COPROXY_TLS_QUIC_BUSY']));

    // When the held flows end, their share is given back and a new flow is served as before.
    for (const { handle } of flows) handle.close();
    expect(used).toBe(0);
    const honest = proxy.serve();
    honest.flow.client.next(buildInitialDatagram({ dcid: Buffer.alloc(8, 9), packetNumber: 0, frames: [cryptoFrame(0, sampleHelloMessage('allowed.example', ['h3']))] }));
    await tick();
    expect(honest.flow.calls).toEqual(['connect']);
    expect(honest.flow.onward.sent).toHaveLength(1);
    // A relayed flow keeps only its hello's bytes charged (for checking later Initials).
    expect(used).toBeGreaterThan(0);
    expect(used).toBeLessThan(16 * 1024);
    honest.handle.close();
    expect(used).toBe(0);
  });
});

/**
 * Hellos arranged so that a reader with fixed bounds cannot see the SNI the server will
 * read: past the coalesced-packet bound, past the datagram bound, across Initials of
 * several connections, or behind a version it has no keys for. Under the CLI's default
 * `--unrecognised block` each flow must be rejected with nothing sent onward (I6): a
 * blocked name never reaches the server because the reader gave up.
 */
describe('QUIC hellos shaped to outrun the reader (attack, holds)', () => {
  const blocked = sampleHelloMessage('blocked.example', ['h3']);
  const dcid = Buffer.alloc(8, 0x5a);

  async function served(datagrams: readonly Buffer[]) {
    const proxy = proxyLike({ unrecognised: 'block' });
    const { flow } = proxy.serve();
    for (const datagram of datagrams) flow.client.next(datagram);
    await tick();
    return { flow, events: proxy.events };
  }

  const expectRejectedUnsent = ({ flow, events }: Awaited<ReturnType<typeof served>>, code: string): void => {
    expect(flow.calls).toEqual(['reject']);
    expect(flow.onward.sent).toEqual([]);
    expect(events.filter((event) => event.type === 'unrecognised')).toEqual([expect.objectContaining({ action: 'block', reason: 'malformed-quic', code })]);
  };

  it('rejects a hello whose SNI is in a 9th Initial coalesced in one datagram', async () => {
    const step = Math.ceil(blocked.length / 9);
    const packets = Array.from({ length: 9 }, (_, i) => buildInitial({ dcid, packetNumber: i, frames: [cryptoFrame(i * step, blocked.subarray(i * step, (i + 1) * step))], payloadLength: 140 }));
    expectRejectedUnsent(await served([Buffer.concat(packets)]), 'COPROXY_TLS_QUIC_MALFORMED');
  });

  it('rejects a hello cut over 17 datagrams (the SNI in the last ones), before the 17th is read', async () => {
    const step = Math.floor(blocked.length / 17);
    const slice = (i: number): Buffer => blocked.subarray(i * step, i === 16 ? blocked.length : (i + 1) * step);
    const datagrams = Array.from({ length: 17 }, (_, i) => buildInitialDatagram({ dcid, packetNumber: i, frames: [cryptoFrame(i * step, slice(i))] }));
    expectRejectedUnsent(await served(datagrams), 'COPROXY_TLS_QUIC_TOO_LARGE');
  });

  it('rejects a flow that sends Initials of two connections (two DCIDs) before either hello is whole', async () => {
    const half = Math.ceil(blocked.length / 2);
    const first = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, blocked.subarray(0, half))] });
    const other = buildInitialDatagram({ dcid: Buffer.alloc(8, 0x6b), packetNumber: 1, frames: [cryptoFrame(half, blocked.subarray(half))] });
    expectRejectedUnsent(await served([first, other]), 'COPROXY_TLS_QUIC_MALFORMED');
  });

  it('rejects a first datagram in a version without known Initial keys (a version negotiation packet, version 0)', async () => {
    const negotiation = Buffer.concat([Buffer.from([0xc0, 0, 0, 0, 0, 8]), dcid, Buffer.from([0]), Buffer.from([0, 0, 0, 1]), Buffer.alloc(1200)]);
    expectRejectedUnsent(await served([negotiation]), 'COPROXY_TLS_QUIC_UNSUPPORTED_VERSION');
  });

  it('blocks the same hello sent whole in one datagram by its SNI (the control: the shapes above, not the name, made the reader refuse)', async () => {
    const { flow, events } = await served([buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, blocked)] })]);
    expect(flow.calls).toEqual(['reject']);
    expect(flow.onward.sent).toEqual([]);
    const handshakes = events.flatMap((event) => (event.type === 'quic-handshake' ? [event.handshake] : []));
    expect(handshakes.map(({ sni, action }) => [sni, action])).toEqual([['blocked.example', 'block']]);
  });
});
