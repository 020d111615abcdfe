import { createHmac, type KeyObject } from 'node:crypto';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { connect } from './connect.js';
import { RedirectRecords } from '../../model/redirect-records.js';
import { createRedirector } from '../../redirector/redirector.js';
import type { RejectedEvent } from '../../redirector/redirector-events.js';
import type { AcceptedConnection } from '../../redirector/accepted-connection.js';
import { entryKey, exchange, passThrough, startEchoOrigin, tempRegistry, until, type Acceptance } from '../../testing/harness.js';
import { AUTH_TAG_BYTES, encodeFlowHeader, TLV_AUTH, TLV_RECORDS } from './flow-header.js';
import { decodeProxyV2, encodeProxyV2, PROXY_V2_SIGNATURE } from './proxy-v2.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

/** Writes raw bytes to the listener and resolves when the redirector closes the socket. */
async function sendRaw(port: number, bytes: Buffer, options: { end?: boolean } = {}): Promise<{ closedBy: 'peer' }> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => socket.destroy()); // a reset is one of the ways the listener may hang up
  socket.write(bytes);
  if (options.end === true) socket.end();
  socket.resume();
  await new Promise((resolve) => socket.once('close', resolve));
  return { closedBy: 'peer' };
}

/** A header as the connector writes it, signed with the redirector's key from its registry entry. */
const goodFlow = (redirectorId: string, port: number, key: KeyObject): Buffer =>
  encodeFlowHeader(
    {
      source: { address: '127.0.0.1', port: 40000 },
      destination: { address: '127.0.0.1', port, family: 4 },
      records: RedirectRecords.empty.withRedirect(redirectorId),
      pid: 4242,
    },
    key,
  );

describe('the embedded listener facing bad input', () => {
  it('rejects each malformed, oversized, truncated or slow header with a typed event and keeps serving', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const r = createRedirector({
      id: uniqueId('guard'), priority: 1, match: { ports: [origin.port] }, registry: registry.path,
      headerTimeoutMs: 300, maxHeaderBytes: 512,
    });
    await using _r = r;
    const rejected: RejectedEvent[] = [];
    r.events$.subscribe((event) => event.type === 'rejected' && rejected.push(event));
    const log: Acceptance[] = [];
    const subscription = passThrough(r, log);
    const { port } = await r.installed();

    const key = entryKey(registry.path, r.id);
    const good = goodFlow(r.id, origin.port, key);
    const withBigTlv = encodeProxyV2({
      source: { address: '127.0.0.1', port: 1 },
      destination: { address: '127.0.0.1', port: origin.port },
      tlvs: [{ type: 0xee, value: Buffer.alloc(600) }],
    });
    const cases: [string, Buffer, { end?: boolean }, string][] = [
      ['plain HTTP instead of a header', Buffer.from('GET / HTTP/1.1\r\n\r\n'), {}, 'COPROXY_PROXY_HEADER_MALFORMED'],
      ['a LOCAL command', Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]), {}, 'COPROXY_PROXY_HEADER_MALFORMED'],
      ['an oversized TLV', withBigTlv, {}, 'COPROXY_PROXY_HEADER_TOO_LARGE'],
      ['a header cut short by the peer', good.subarray(0, 20), { end: true }, 'COPROXY_PROXY_HEADER_INCOMPLETE'],
      ['a header that never completes', good.subarray(0, 20), {}, 'COPROXY_PROXY_HEADER_TIMEOUT'],
      ['records that are not valid', corruptRecords(good, key), {}, 'COPROXY_RECORDS_MALFORMED'],
      ['records that name another redirector last', goodFlow('someone-else', origin.port, key), {}, 'COPROXY_RECORDS_MISMATCH'],
    ];
    for (const [, bytes, options] of cases) await sendRaw(port, bytes, options);

    await until(() => rejected.length === cases.length, 5000, 'every rejection');
    expect(rejected.map((e) => e.error.code)).toEqual(cases.map(([, , , code]) => code));
    expect(rejected.every((e) => e.remote.address === '127.0.0.1')).toBe(true);
    expect(log).toHaveLength(0);

    const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'ok', Buffer.from('still serving'));
    expect(reply.toString()).toBe('FLOW ok\nstill serving');
    subscription.unsubscribe();
  });

  it('hands over payload bytes that arrive in the same segment as the header', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    await using r = createRedirector({ id: uniqueId('coalesce'), priority: 1, registry: registry.path });
    const accepted: AcceptedConnection[] = [];
    const subscription = r.accepted$.subscribe((conn) => accepted.push(conn));
    const { port } = await r.installed();
    const client = net.connect(port, '127.0.0.1');
    client.end(Buffer.concat([goodFlow(r.id, origin.port, entryKey(registry.path, r.id)), Buffer.from('payload-in-first-segment')]));
    await until(() => accepted.length === 1, 5000, 'the flow');
    const chunks: Buffer[] = [];
    for await (const chunk of accepted[0]!.socket) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('payload-in-first-segment');
    expect(accepted[0]!.source).toEqual({ address: '127.0.0.1', port: 40000, pid: 4242 });
    subscription.unsubscribe();
  });

  it("denies a redirector the context another redirector attached", async () => {
    using registry = tempRegistry();
    await using r = createRedirector({ id: uniqueId('reader'), priority: 1, registry: registry.path });
    const accepted: AcceptedConnection[] = [];
    const subscription = r.accepted$.subscribe((conn) => accepted.push(conn));
    const { port } = await r.installed();
    // Signed by a process of the owner: the check is the context's, not the peer's.
    const forged = encodeFlowHeader(
      {
        source: { address: '127.0.0.1', port: 1 },
        destination: { address: '127.0.0.1', port: 9, family: 4 },
        records: RedirectRecords.empty.withRedirect('owner').withRedirect(r.id),
        context: { owner: 'owner', bytes: Buffer.from('secret') },
      },
      entryKey(registry.path, r.id),
    );
    const client = net.connect(port, '127.0.0.1');
    client.write(forged);
    await until(() => accepted.length === 1, 5000, 'the flow');
    expect(() => accepted[0]!.context()).toThrow(
      expect.objectContaining({ code: 'COPROXY_CONTEXT_ACCESS_DENIED', redirectorId: r.id, ownerId: 'owner' }),
    );
    client.destroy();
    subscription.unsubscribe();
  });
});

/**
 * The header with its records' version byte changed, then signed again as the header
 * format documents (HMAC-SHA256 over every byte before the tag): only the records are wrong.
 */
function corruptRecords(header: Buffer, key: KeyObject): Buffer {
  const decoded = decodeProxyV2(header, 4096)!.header;
  const tlvs = decoded.tlvs.filter((tlv) => tlv.type !== TLV_AUTH).map((tlv) => {
    if (tlv.type !== TLV_RECORDS) return tlv;
    const value = Buffer.from(tlv.value);
    value[0] = 9; // records version 9
    return { type: tlv.type, value };
  });
  const unsigned = encodeProxyV2({ source: decoded.source, destination: decoded.destination, tlvs: [...tlvs, { type: TLV_AUTH, value: Buffer.alloc(AUTH_TAG_BYTES) }] });
  const signed = unsigned.length - AUTH_TAG_BYTES;
  createHmac('sha256', key).update(unsigned.subarray(0, signed)).digest().copy(unsigned, signed);
  return unsigned;
}
