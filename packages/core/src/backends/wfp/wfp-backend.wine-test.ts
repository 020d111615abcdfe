// Wine lane (scripts/wine-lane.sh): the whole WFP backend on the Windows builds of Node,
// koffi and libuv, with the PE stand-in (test-fixtures/wfp/ws2-stand-in-win.c) in place of the
// callout driver: Winsock listener and accept, the three ioctls, SO_ORIGINAL_DST, adoption
// into IOCP, connectOnward with the records SET before connect, relaying. The test plays
// the callout, as on the Linux lane (wfp-backend.test.ts).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import type { Subscription } from 'rxjs';
import { createRedirector } from '../../redirector/redirector.js';
import type { RedirectorEvent } from '../../redirector/redirector-events.js';
import { type CalloutFlow, type Origin, type VendorOptions, type WfpVendor, exchange, recordsBlob, redirectedClient as redirectedClientOf, startOrigin, wfpVendor } from '../../testing/wfp-callout.js';
import { type StandIn, installStandIn, uninstallStandIn } from '../../testing/wfp-stand-in.js';
import { assertServesNothingAfterClose, assertWindowsBuild, standInLibrary } from '../../testing/wine.js';
import { Win32Error } from './ioctl-codes.js';
import { UNKNOWN_CONTEXT_OWNER } from './wfp-backend.js';
import type { Winsock } from './winsock.js';

describe('the WFP backend on the Windows builds of Node and koffi (PE stand-in for the callout)', () => {
  let standIn: StandIn;
  let ws: Winsock;
  let origin: Origin;
  const subscriptions: Subscription[] = [];
  const redirectors: AsyncDisposable[] = [];

  const scene = { subscriptions, redirectors };
  /** A client whose connection "the callout" redirected to the listener, from `flow.to` (default: the origin). */
  const redirectedClient = (listenerPort: number, flow: Omit<CalloutFlow, 'to'> & { to?: Origin }, host?: string): Promise<net.Socket> =>
    redirectedClientOf({ ws, standIn }, listenerPort, { ...flow, to: flow.to ?? origin }, host);
  const vendor = (options?: VendorOptions): WfpVendor => wfpVendor(scene, options);

  before(() => {
    assertWindowsBuild();
    ({ standIn, ws } = installStandIn(standInLibrary()));
  });
  after(() => uninstallStandIn(standIn));
  beforeEach(async () => {
    standIn.reset();
    origin = await startOrigin(standIn);
  });
  afterEach(async () => {
    for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
    for (const redirector of redirectors.splice(0)) await redirector[Symbol.asyncDispose]();
    await origin.close();
  });

  it('accepts a redirected flow, reports what user mode can know, and sets its records, byte for byte, on the onward socket', async () => {
    const { redirector, accepted } = vendor();
    const listening = await redirector.installed();
    const records = recordsBlob(1);
    const client = await redirectedClient(listening.port, { records, context: Buffer.from('verdict-cache:42') });
    const clientPort = client.localPort;

    assert.equal(await exchange(client, 'ping'), 'origin:ping');
    assert.equal(origin.seen.length, 1);
    assert.equal(origin.seen[0]?.bytes, 'ping');
    assert.ok(origin.seen[0]?.records?.equals(records), 'the onward socket carried the blob');

    const [connection] = accepted;
    assert.ok(connection !== undefined);
    assert.deepEqual(connection.originalDestination, { address: '127.0.0.1', port: origin.port, family: 4 });
    assert.deepEqual(connection.source, { address: '127.0.0.1', port: clientPort });
    assert.deepEqual(connection.records.redirectedBy, ['acme-av']);
    assert.equal(connection.records.stateFor('acme-av'), 'RedirectedBySelf');
    assert.equal(connection.context().toString(), 'verdict-cache:42');
  });

  it('does all of it over IPv6 (AF_INET6 is 23 on Windows): listener, client, original destination, onward socket', async () => {
    const v6 = await startOrigin(standIn, '::1');
    try {
      const { redirector, accepted } = vendor({ host: '::1' });
      const listening = await redirector.installed();
      assert.equal(listening.address, '::1');
      const records = recordsBlob(11, 700);
      const client = await redirectedClient(listening.port, { records, to: v6 }, '::1');
      assert.equal(await exchange(client, 'over six'), 'origin:over six');
      assert.equal(v6.seen[0]?.bytes, 'over six');
      assert.ok(v6.seen[0]?.records?.equals(records));
      assert.deepEqual(accepted[0]?.originalDestination, { address: '::1', port: v6.port, family: 6 });
      assert.equal(accepted[0]?.source.address, '::1');
    } finally {
      await v6.close();
    }
  });

  it('relays a large flow both ways intact through the adopted sockets', async () => {
    const { redirector } = vendor();
    const listening = await redirector.installed();
    const client = await redirectedClient(listening.port, { records: recordsBlob(2) });
    const payload = 'x'.repeat(2 * 1024 * 1024);
    const reply = await exchange(client, payload);
    assert.equal(reply.length, payload.length + 'origin:'.length);
    assert.equal(origin.seen[0]?.bytes.length, payload.length);
  });

  it('serves many flows at once, each carrying its own records onward', async () => {
    const { redirector, accepted } = vendor();
    const listening = await redirector.installed();
    const flows = Array.from({ length: 16 }, (_, i) => ({ payload: `flow-${i}`, records: recordsBlob(i, 100 + i * 300) }));
    const clients = await Promise.all(flows.map((flow) => redirectedClient(listening.port, { records: flow.records })));
    const replies = await Promise.all(clients.map((client, i) => exchange(client, flows[i]!.payload)));
    assert.deepEqual(replies, flows.map((flow) => `origin:${flow.payload}`));
    assert.equal(accepted.length, 16);
    for (const flow of flows) {
      assert.ok(origin.seen.find((seen) => seen.bytes === flow.payload)?.records?.equals(flow.records), flow.payload);
    }
  });

  it('sets no records onward with propagateRecords: false', async () => {
    const { redirector } = vendor({ propagateRecords: false });
    const listening = await redirector.installed();
    const client = await redirectedClient(listening.port, { records: recordsBlob(7) });
    assert.equal(await exchange(client, 'drop'), 'origin:drop');
    assert.deepEqual(origin.seen, [{ bytes: 'drop', records: undefined }]);
  });

  it('rejects a connection WFP did not redirect (no records) with a typed event, and keeps serving', async () => {
    const { redirector, accepted, events } = vendor();
    const listening = await redirector.installed();
    const direct = net.connect({ host: '127.0.0.1', port: listening.port });
    direct.on('error', () => undefined);
    direct.resume();
    await once(direct, 'close');
    const rejected = events.find((event) => event.type === 'rejected');
    assert.ok(rejected?.type === 'rejected');
    assert.equal(rejected.error.code, 'COPROXY_RECORDS_MISMATCH');
    assert.equal(rejected.remote.address, '127.0.0.1');

    const client = await redirectedClient(listening.port, { records: recordsBlob(3) });
    assert.equal(await exchange(client, 'after'), 'origin:after');
    assert.equal(accepted.length, 1);
  });

  it("maps the context query: none, someone else's, the option as a fallback, and a failure that rejects the flow", async () => {
    const { redirector, accepted, events } = vendor();
    const listening = await redirector.installed();
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(1) }), 'a');
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(2), context: Buffer.alloc(0) }), 'b');
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(3), contextError: Win32Error.ERROR_ACCESS_DENIED }), 'c');
    assert.throws(() => accepted[0]?.context(), { code: 'COPROXY_CONTEXT_NOT_FOUND', redirectorId: 'acme-av' });
    assert.throws(() => accepted[1]?.context(), { code: 'COPROXY_CONTEXT_NOT_FOUND' });
    assert.throws(() => accepted[2]?.context(), { code: 'COPROXY_CONTEXT_ACCESS_DENIED', ownerId: UNKNOWN_CONTEXT_OWNER });

    const overflow = await redirectedClient(listening.port, { records: recordsBlob(4), contextError: Win32Error.ERROR_ARITHMETIC_OVERFLOW });
    overflow.resume();
    await once(overflow, 'end');
    overflow.destroy();
    const rejected = events.find((event) => event.type === 'rejected');
    assert.ok(rejected?.type === 'rejected');
    assert.equal(rejected.error.code, 'COPROXY_WFP_IOCTL_FAILED');
    assert.equal((rejected.error as unknown as { win32Error: number }).win32Error, 534);
    assert.equal(accepted.length, 3);

    const withOption = vendor({ id: 'parental', context: Buffer.from('from-the-option') });
    const port = (await withOption.redirector.installed()).port;
    await exchange(await redirectedClient(port, { records: recordsBlob(5) }), 'd');
    await exchange(await redirectedClient(port, { records: recordsBlob(6), context: Buffer.from('from-the-callout') }), 'e');
    assert.deepEqual(
      withOption.accepted.map((connection) => connection.context().toString()),
      ['from-the-option', 'from-the-callout'],
    );
  });

  it('stops listening the moment the last subscriber leaves', async () => {
    const redirector = createRedirector({ id: 'acme-av', priority: 10, backend: 'wfp' });
    redirectors.push(redirector);
    const events: RedirectorEvent[] = [];
    subscriptions.push(redirector.events$.subscribe((event) => events.push(event)));
    const subscription = redirector.accepted$.subscribe();
    const { port } = await redirector.installed();
    subscription.unsubscribe();
    assert.deepEqual(events.map((event) => event.type), ['installed', 'uninstalled']);
    await assertServesNothingAfterClose(port);
    assert.deepEqual(events.map((event) => event.type), ['installed', 'uninstalled']);
  });
});
