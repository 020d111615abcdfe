import { describe, expect, it } from 'vitest';
import type { FlowSpec } from './flows.js';
import type { ClientFlowReport, OriginFlowReport } from './protocol.js';
import { type Acceptance, judge } from './scenario.js';

// The verdict on one flow from what the vendors, the client and the origin reported, in
// the shapes real runs produced (the first from a 600-flow nftables run on an overloaded
// machine, where curl sent a request again on a new connection).

const flow: FlowSpec = { index: 60, kind: 'http', port: 61085, serverName: 'flow60.test', payloadBytes: 1000, requests: 2, viaCurl: true };
const chain = { vendors: ['tls-vendor', 'http-vendor'], delivered: true };
const client: ClientFlowReport = { index: 60, kind: 'http', port: 61085, ok: true, sent: 'a', sentBytes: 2000, received: 'b', receivedBytes: 10, viaCurl: true };
const origin = (connections: number): OriginFlowReport => ({ port: 61085, connections, received: 'a', receivedBytes: 2000, sent: 'b' });

let ids = 0;
const hop = (vendor: string, state: string, redirectedBy: readonly string[]): Acceptance => ({
  vendor,
  port: 61085,
  transport: 'tcp',
  state,
  redirectedBy,
  connectionId: `${vendor}#${++ids}`,
});
const first = (): Acceptance => hop('tls-vendor', 'NotRedirected', ['tls-vendor']);
const second = (): Acceptance => hop('http-vendor', 'RedirectedByOther', ['tls-vendor', 'http-vendor']);

describe('judging a flow', () => {
  it('passes one connection through both vendors once, in order', () => {
    const result = judge(flow, undefined, chain, [second(), first()], client, origin(1));
    expect(result.looped).toBe(false);
    expect(result.problems).toEqual([]);
    expect(result.hops.map((h) => h.vendor)).toEqual(['tls-vendor', 'http-vendor']);
  });

  it('passes a client that opened a second connection for the flow, each through both vendors once: not a loop', () => {
    const result = judge(flow, undefined, chain, [first(), first(), second(), second()], client, origin(2));
    expect(result.looped).toBe(false);
    expect(result.problems).toEqual([]);
  });

  it('still calls a second fresh acceptance a loop when the origin saw one connection (a vendor that dropped every record)', () => {
    const result = judge(flow, undefined, chain, [first(), second(), first(), second()], client, origin(1));
    expect(result.looped).toBe(true);
    expect(result.problems).toEqual(['tls-vendor accepted it 2 times', 'http-vendor accepted it 2 times']);
  });

  it('calls a flow that came back with records a loop, whatever the origin saw', () => {
    const back = hop('tls-vendor', 'RedirectedByOther', ['http-vendor', 'tls-vendor']);
    const result = judge(flow, undefined, chain, [first(), second(), back], client, origin(2));
    expect(result.looped).toBe(true);
    expect(result.problems).toContain('tls-vendor accepted it 2 times');
  });

  it('finds wrong records on the second of two client connections', () => {
    const wrong = hop('http-vendor', 'RedirectedByOther', ['other-vendor', 'http-vendor']);
    const result = judge(flow, undefined, chain, [first(), first(), second(), wrong], client, origin(2));
    expect(result.looped).toBe(false);
    expect(result.problems).toEqual(['http-vendor saw records [other-vendor, http-vendor], expected [tls-vendor, http-vendor]']);
  });

  it('says which vendor missed a connection when one of two went around it', () => {
    const result = judge(flow, undefined, chain, [first(), first(), second()], client, origin(2));
    expect(result.looped).toBe(false);
    expect(result.problems).toEqual(['http-vendor accepted it 1 times']);
  });
});
