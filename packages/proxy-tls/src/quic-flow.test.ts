import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { TlsErrorCode } from './errors.js';
import type { TlsOwnEvent } from './events.js';
import { TlsProxyMetrics } from './metrics.js';
import { type PolicyFile, compilePolicy, parsePolicy } from './policy.js';
import { type QuicFlow, type QuicFlowOptions, type QuicOnwardSocket, serveQuicFlow } from './quic-flow.js';
import { Reporter } from './reporter.js';
import { buildInitialDatagram, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic');
/** Chromium's two Initial datagrams: the hello is whole with the second. */
const CHROMIUM = fs
  .readFileSync(path.join(fixtures, 'chromium-initials.hex'), 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => Buffer.from(line, 'hex'));

/** The onward socket of the fake flow: what was sent to the destination, and a subject for its answers. */
class FakeOnward implements QuicOnwardSocket {
  readonly sent: Buffer[] = [];
  readonly answers = new Subject<Buffer>();
  readonly datagrams$ = this.answers.asObservable();
  closed = false;
  send(payload: Buffer): void {
    this.sent.push(Buffer.from(payload));
  }
  close(): void {
    this.closed = true;
  }
}

/** A UDP flow as core would hand it over, recording everything the vendor does with it. */
class FakeFlow implements QuicFlow {
  readonly transport = 'udp' as const;
  readonly id = 'flow-1';
  readonly originalDestination = { address: '10.200.0.1', port: 443, family: 4 as const };
  readonly source = { address: '10.200.0.2', port: 50_000, pid: 4242 };
  readonly client = new Subject<Buffer>();
  readonly datagrams$ = this.client.asObservable();
  readonly toClient: Buffer[] = [];
  /** What the vendor did, in order: connect, reject, close. */
  readonly calls: string[] = [];
  readonly onward = new FakeOnward();
  rejected: string | undefined;
  constructor(private readonly onwardFails = false) {}
  send(payload: Buffer): void {
    this.toClient.push(Buffer.from(payload));
  }
  connectOnward(): Promise<QuicOnwardSocket> {
    this.calls.push('connect');
    return this.onwardFails ? Promise.reject(Object.assign(new Error('connect ENETUNREACH'), { code: 'ENETUNREACH' })) : Promise.resolve(this.onward);
  }
  reject(reason: string): void {
    this.calls.push('reject');
    this.rejected = reason;
  }
  close(): void {
    this.calls.push('close');
  }
}

function setup(policy: PolicyFile, options: Partial<QuicFlowOptions> = {}, flow = new FakeFlow()) {
  const events: TlsOwnEvent[] = [];
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  const reporter = new Reporter(new TlsProxyMetrics(), pino({ level: 'debug' }, sink), (event) => events.push(event));
  const handle = serveQuicFlow(flow, { policy: compilePolicy(parsePolicy(policy)), unrecognised: 'block', reporter, ...options });
  return { flow, events, lines, handle };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('a QUIC flow through coproxy-tls', () => {
  it('blocks Chromium’s QUIC under a bump policy, so that it falls back to TCP, and says so with its SNI and JA4', async () => {
    const { flow, events, lines, handle } = setup({ default: 'bump' });
    for (const datagram of CHROMIUM) flow.client.next(datagram);
    const outcome = await handle.done;
    expect(outcome.kind).toBe('blocked');
    expect(flow.calls).toEqual(['reject']);
    expect(flow.onward.sent).toEqual([]);
    const handshake = events.find((event) => event.type === 'quic-handshake');
    expect(handshake).toMatchObject({
      handshake: { transport: 'quic', flowId: 'flow-1', sni: 'quic.test', alpn: ['h3'], action: 'block', rule: undefined, quicVersion: 'v1', initialPackets: 2, datagrams: 2 },
    });
    if (handshake?.type !== 'quic-handshake') throw new Error('no quic-handshake event');
    expect(handshake.handshake.ja4).toMatch(/^q13d\d{4}h3_/);
    expect(handshake.handshake.note).toContain('falls back to TCP');
    expect(lines.find((line) => line.msg === 'handshake')).toMatchObject({ handshake: { transport: 'quic', sni: 'quic.test', ja4: handshake.handshake.ja4 } });
  });

  it('relays the flow under a quic rule, forwarding nothing before the hello is read, then every datagram both ways byte for byte', async () => {
    const { flow, events, handle } = setup({ default: 'bump', rules: [{ name: 'h3-passes', when: { quic: true }, action: 'splice' }] });
    flow.client.next(CHROMIUM[0]!);
    await tick();
    // The first datagram alone holds half a hello: no onward socket yet (I6).
    expect(flow.calls).toEqual([]);
    flow.client.next(CHROMIUM[1]!);
    await tick();
    expect(flow.calls).toEqual(['connect']);
    expect(flow.onward.sent).toEqual(CHROMIUM);
    const later = Buffer.from('4f00112233445566778899', 'hex');
    flow.client.next(later);
    flow.onward.answers.next(Buffer.from('c0ffee', 'hex'));
    expect(flow.onward.sent).toEqual([...CHROMIUM, later]);
    expect(flow.toClient).toEqual([Buffer.from('c0ffee', 'hex')]);
    flow.client.complete();
    expect(await handle.done).toMatchObject({ kind: 'relayed', handshake: { action: 'relay', rule: 'h3-passes' } });
    expect(flow.onward.closed).toBe(true);
    expect(flow.calls).toEqual(['connect', 'close']);
    expect(events.filter((event) => event.type === 'quic-handshake')).toHaveLength(1);
  });

  it('holds the datagrams that arrive while the onward socket opens, and sends them after the hello, in order', async () => {
    const { flow, handle } = setup({ default: 'splice' });
    const extra = Buffer.from('40aabbcc', 'hex');
    flow.client.next(CHROMIUM[0]!);
    flow.client.next(CHROMIUM[1]!);
    flow.client.next(extra); // before connectOnward's promise settles
    await tick();
    expect(flow.onward.sent).toEqual([...CHROMIUM, extra]);
    handle.close();
    expect(await handle.done).toEqual({ kind: 'ended' });
    expect(flow.onward.closed).toBe(true);
  });

  it('blocks by SNI as on TCP, naming the rule', async () => {
    const { flow, handle } = setup({ default: 'splice', rules: [{ name: 'no-quic-test', when: { sni: 'quic.test' }, action: 'block' }] });
    for (const datagram of CHROMIUM) flow.client.next(datagram);
    expect(await handle.done).toMatchObject({ kind: 'blocked', handshake: { rule: 'no-quic-test', action: 'block' } });
    expect(flow.calls).toEqual(['reject']);
  });

  it('follows the unrecognised policy for a malformed Initial: block rejects it, with the reader’s code', async () => {
    const broken = Buffer.from(CHROMIUM[0]!);
    broken[700]! ^= 0x10; // inside the AEAD
    const { flow, events, handle } = setup({ default: 'splice' });
    flow.client.next(broken);
    expect(await handle.done).toMatchObject({ kind: 'blocked', reason: 'unrecognised: malformed-quic' });
    expect(flow.calls).toEqual(['reject']);
    expect(events).toContainEqual({ type: 'unrecognised', connectionId: 'flow-1', action: 'block', reason: 'malformed-quic', code: TlsErrorCode.QuicDecryptFailed });
    expect(events).toContainEqual(expect.objectContaining({ type: 'hello-rejected', code: TlsErrorCode.QuicDecryptFailed }));
  });

  it('follows the unrecognised policy for a malformed Initial: relay forwards it unchanged after the decision', async () => {
    const broken = Buffer.from(CHROMIUM[0]!);
    broken[700]! ^= 0x10;
    const { flow, handle } = setup({ default: 'bump' }, { unrecognised: 'relay' });
    flow.client.next(broken);
    await tick();
    expect(flow.calls).toEqual(['connect']);
    expect(flow.onward.sent).toEqual([broken]);
    flow.onward.answers.complete();
    expect(await handle.done).toMatchObject({ kind: 'relayed', handshake: undefined });
  });

  it('calls a datagram that is no QUIC long header unknown, not malformed', async () => {
    const { flow, events, handle } = setup({ default: 'splice' });
    flow.client.next(Buffer.from('just some udp'));
    await handle.done;
    expect(events).toEqual([{ type: 'unrecognised', connectionId: 'flow-1', action: 'block', reason: 'unknown' }]);
  });

  it('rejects a flow whose hello never completes, even under unrecognised relay: nothing is forwarded', async () => {
    const { flow, events, handle } = setup({ default: 'splice' }, { unrecognised: 'relay', helloTimeoutMs: 50 });
    flow.client.next(CHROMIUM[0]!);
    expect(await handle.done).toEqual({ kind: 'failed', code: TlsErrorCode.HelloTimeout });
    expect(flow.calls).toEqual(['reject']);
    expect(flow.onward.sent).toEqual([]);
    expect(events).toContainEqual(expect.objectContaining({ type: 'hello-rejected', code: TlsErrorCode.HelloTimeout }));
  });

  it('closes a flow that ends before its hello is whole, forwarding nothing', async () => {
    const { flow, handle } = setup({ default: 'splice' });
    flow.client.next(CHROMIUM[0]!);
    flow.client.complete();
    expect(await handle.done).toEqual({ kind: 'ended' });
    expect(flow.calls).toEqual(['close']);
  });

  it('rejects the flow when the onward socket cannot be opened, so that the client falls back at once', async () => {
    const { flow, events, handle } = setup({ default: 'splice' }, {}, new FakeFlow(true));
    for (const datagram of CHROMIUM) flow.client.next(datagram);
    expect(await handle.done).toEqual({ kind: 'failed', code: 'ENETUNREACH' });
    expect(flow.calls).toEqual(['connect', 'reject']);
    expect(events).toContainEqual(expect.objectContaining({ type: 'connection-failed', code: 'ENETUNREACH' }));
  });

  it('bounds what it holds before the hello: past the bound the flow is unrecognised (QUIC_TOO_LARGE)', async () => {
    const dcid = Buffer.from('0102030405060708', 'hex');
    const message = sampleHelloMessage('quic.example', ['h3']);
    const { flow, events, handle } = setup({ default: 'splice' }, { maxHeldBytes: 2000 });
    flow.client.next(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message.subarray(0, 10))] }));
    flow.client.next(buildInitialDatagram({ dcid, packetNumber: 1, frames: [cryptoFrame(10, message.subarray(10, 20))] }));
    expect(await handle.done).toMatchObject({ kind: 'blocked' });
    expect(events).toContainEqual(expect.objectContaining({ type: 'unrecognised', reason: 'malformed-quic', code: TlsErrorCode.QuicTooLarge }));
  });
});

describe('the quic policy condition', () => {
  const decide = compilePolicy(parsePolicy({ default: 'splice', rules: [{ name: 'tcp-only', when: { quic: false }, action: 'bump' }] }));
  const facts = { sni: 'a.example', alpn: [], ja3: '', ja4: '', ech: false };

  it('tells TCP hellos (no quic fact) from QUIC ones', () => {
    expect(decide(facts)).toEqual({ action: 'bump', rule: 'tcp-only' });
    expect(decide({ ...facts, quic: true })).toEqual({ action: 'splice', rule: undefined });
  });

  it('refuses a quic condition that is not a boolean', () => {
    expect(() => parsePolicy({ rules: [{ name: 'x', when: { quic: 'yes' }, action: 'block' }] })).toThrow(expect.objectContaining({ code: TlsErrorCode.PolicyInvalid }));
  });
});
