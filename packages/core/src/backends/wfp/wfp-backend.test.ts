import { once } from 'node:events';
import net from 'node:net';
import type { Subscription } from 'rxjs';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createRedirector } from '../../redirector/redirector.js';
import type { RedirectorEvent } from '../../redirector/redirector-events.js';
import { type CalloutFlow, type Origin, type VendorOptions, type WfpVendor, exchange, recordsBlob, redirectedClient as redirectedClientOf, startOrigin, wfpVendor } from '../../testing/wfp-callout.js';
import { type StandIn, installStandIn, uninstallStandIn } from '../../testing/wfp-stand-in.js';
import { Win32Error } from './ioctl-codes.js';
import { UNKNOWN_CONTEXT_OWNER } from './wfp-backend.js';
import type { Winsock } from './winsock.js';

describe('the WFP backend (Winsock stand-in in place of ws2_32.dll, the test playing the callout)', () => {
  let standIn: StandIn;
  let ws: Winsock;
  let origin: Origin;
  const subscriptions: Subscription[] = [];

  const scene = { subscriptions };
  /** A client whose connection "the callout" redirected to the listener, from the origin. */
  const redirectedClient = (listenerPort: number, flow: Omit<CalloutFlow, 'to'>): Promise<net.Socket> =>
    redirectedClientOf({ ws, standIn }, listenerPort, { ...flow, to: origin });
  const vendor = (options?: VendorOptions): WfpVendor => wfpVendor(scene, options);

  beforeAll(() => ({ standIn, ws } = installStandIn()));
  afterAll(() => uninstallStandIn(standIn));
  beforeEach(async () => {
    standIn.reset();
    origin = await startOrigin(standIn);
  });
  afterEach(async () => {
    for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
    await origin.close();
  });

  it('accepts a redirected flow, reports what user mode can know, and sets its records, byte for byte, on the onward socket', async () => {
    const { redirector, accepted } = vendor();
    await using _r = redirector;
    const listening = await redirector.installed();
    const records = recordsBlob(1);
    const client = await redirectedClient(listening.port, { records, context: Buffer.from('verdict-cache:42') });
    const clientPort = client.localPort;

    expect(await exchange(client, 'ping')).toBe('origin:ping');
    expect(origin.seen).toEqual([{ bytes: 'ping', records }]);

    const [connection] = accepted;
    expect(connection?.originalDestination).toEqual({ address: '127.0.0.1', port: origin.port, family: 4 });
    expect(connection?.source).toEqual({ address: '127.0.0.1', port: clientPort });
    expect(connection?.records.redirectedBy).toEqual(['acme-av']);
    expect(connection?.records.stateFor('acme-av')).toBe('RedirectedBySelf');
    expect(connection?.state).toBe('NotRedirected'); // what the callout saw is the kernel's: see wfp-backend.ts
    expect(connection?.context().toString()).toBe('verdict-cache:42');
  });

  it('serves many flows at once, each carrying its own records onward', async () => {
    const { redirector, accepted } = vendor();
    await using _r = redirector;
    const listening = await redirector.installed();
    const flows = Array.from({ length: 24 }, (_, i) => ({ payload: `flow-${i}`, records: recordsBlob(i, 100 + i * 300) }));
    const clients = await Promise.all(flows.map((flow) => redirectedClient(listening.port, { records: flow.records })));
    const replies = await Promise.all(clients.map((client, i) => exchange(client, flows[i]!.payload)));
    expect(replies).toEqual(flows.map((flow) => `origin:${flow.payload}`));
    expect(accepted).toHaveLength(24);
    for (const flow of flows) {
      expect(origin.seen.find((seen) => seen.bytes === flow.payload)?.records?.equals(flow.records)).toBe(true);
    }
  });

  it('sets no records onward with propagateRecords: false: user mode cannot make a blob of its own', async () => {
    const { redirector } = vendor({ propagateRecords: false });
    await using _r = redirector;
    const listening = await redirector.installed();
    const client = await redirectedClient(listening.port, { records: recordsBlob(7) });
    expect(await exchange(client, 'drop')).toBe('origin:drop');
    expect(origin.seen).toEqual([{ bytes: 'drop', records: undefined }]);
  });

  it('rejects a connection WFP did not redirect (no records) with a typed event, and keeps serving', async () => {
    const { redirector, accepted, events } = vendor();
    await using _r = redirector;
    const listening = await redirector.installed();
    const direct = net.connect({ host: '127.0.0.1', port: listening.port });
    direct.resume();
    await once(direct, 'close');
    const rejected = events.find((event) => event.type === 'rejected');
    expect(rejected).toMatchObject({ error: { code: 'COPROXY_RECORDS_MISMATCH', redirectorId: 'acme-av' }, remote: { address: '127.0.0.1' } });

    const client = await redirectedClient(listening.port, { records: recordsBlob(3) });
    expect(await exchange(client, 'after')).toBe('origin:after');
    expect(accepted).toHaveLength(1);
  });

  it('maps the context query: none, someone else\'s, the option as a fallback, and a failure that rejects the flow', async () => {
    const { redirector, accepted, events } = vendor();
    await using _r = redirector;
    const listening = await redirector.installed();
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(1) }), 'a');
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(2), context: Buffer.alloc(0) }), 'b');
    await exchange(await redirectedClient(listening.port, { records: recordsBlob(3), contextError: Win32Error.ERROR_ACCESS_DENIED }), 'c');
    expect(() => accepted[0]?.context()).toThrow(expect.objectContaining({ code: 'COPROXY_CONTEXT_NOT_FOUND', redirectorId: 'acme-av' }));
    expect(() => accepted[1]?.context()).toThrow(expect.objectContaining({ code: 'COPROXY_CONTEXT_NOT_FOUND' }));
    expect(() => accepted[2]?.context()).toThrow(expect.objectContaining({ code: 'COPROXY_CONTEXT_ACCESS_DENIED', ownerId: UNKNOWN_CONTEXT_OWNER }));

    const overflow = await redirectedClient(listening.port, { records: recordsBlob(4), contextError: Win32Error.ERROR_ARITHMETIC_OVERFLOW });
    overflow.resume();
    await once(overflow, 'end'); // the backend closed it; the client allows half-open, so 'end', not 'close'
    overflow.destroy();
    expect(events.find((event) => event.type === 'rejected')).toMatchObject({
      error: { code: 'COPROXY_WFP_IOCTL_FAILED', win32Error: 534, ioctl: 'SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT' },
    });
    expect(accepted).toHaveLength(3);

    const withOption = vendor({ id: 'parental', context: Buffer.from('from-the-option') });
    await using _p = withOption.redirector;
    const port = (await withOption.redirector.installed()).port;
    await exchange(await redirectedClient(port, { records: recordsBlob(5) }), 'd');
    await exchange(await redirectedClient(port, { records: recordsBlob(6), context: Buffer.from('from-the-callout') }), 'e');
    expect(withOption.accepted.map((connection) => connection.context().toString())).toEqual(['from-the-option', 'from-the-callout']);
  });

  it('stops listening the moment the last subscriber leaves', async () => {
    const redirector = createRedirector({ id: 'acme-av', priority: 10, backend: 'wfp' });
    await using _r = redirector;
    const events: RedirectorEvent[] = [];
    subscriptions.push(redirector.events$.subscribe((event) => events.push(event)));
    const subscription = redirector.accepted$.subscribe();
    const { port } = await redirector.installed();
    subscription.unsubscribe();
    expect(events.map((event) => event.type)).toEqual(['installed', 'uninstalled']);
    const refused = net.connect({ host: '127.0.0.1', port });
    const [error] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    expect(error.code).toBe('ECONNREFUSED');
  });

  it('refuses a listen host that is not an IP address, as an install error', async () => {
    const redirector = createRedirector({ id: 'acme-av', priority: 10, backend: 'wfp', listen: { host: 'example.test' } });
    await using _r = redirector;
    const failed = new Promise<unknown>((resolve) => subscriptions.push(redirector.accepted$.subscribe({ error: resolve })));
    expect(await failed).toMatchObject({ code: 'COPROXY_INVALID_OPTIONS', option: 'listen.host' });
  });
});

describe('the WFP backend off Windows', () => {
  it.skipIf(process.platform === 'win32')('says plainly that it needs Windows when no stand-in is injected', () => {
    expect(() => createRedirector({ id: 'k', priority: 1, backend: 'wfp' })).toThrow(
      expect.objectContaining({ code: 'COPROXY_BACKEND_UNAVAILABLE', backend: 'wfp', reason: expect.stringMatching(/needs Windows/) as unknown }),
    );
  });
});
