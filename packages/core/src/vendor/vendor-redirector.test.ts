import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Counter } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { connect } from '../backends/embedded/connect.js';
import { connectDatagram } from '../backends/embedded/datagram-connect.js';
import { relay } from '../net/relay.js';
import type { RedirectorEvent } from '../redirector/redirector-events.js';
import { startEchoOrigin, tempRegistry, until } from '../testing/harness.js';
import { refusingPort } from '../testing/ports.js';
import { firstValueFrom } from 'rxjs';
import { RedirectorMetrics, serveMetrics } from './redirector-metrics.js';
import { createVendorRedirector, type VendorRedirectorOptions } from './vendor-redirector.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

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

/** A vendor's own options type: the redirector's fields come from the kit, not re-declared. */
interface EchoVendorOptions extends VendorRedirectorOptions {
  readonly tag: string;
}

type EchoVendorEvent = { readonly type: 'relayed'; readonly connectionId: string; readonly tag: string };

class EchoVendorMetrics extends RedirectorMetrics {
  readonly relayed = new Counter({ name: 'echo_vendor_relayed_total', help: 'Connections relayed', registers: [this.registry] });
  constructor() {
    super({ prefix: 'echo_vendor' });
  }
}

/** The smallest vendor: relays every flow, counting and reporting each. */
function startEchoVendor(options: EchoVendorOptions) {
  const metrics = new EchoVendorMetrics();
  const vendor = createVendorRedirector<EchoVendorEvent>({
    options,
    defaultMatch: { ports: [1] },
    metrics,
    onAccepted: (conn) => {
      conn.connectOnward().then(
        (upstream) => {
          metrics.relayed.inc();
          vendor.emit({ type: 'relayed', connectionId: conn.id, tag: options.tag });
          void relay(conn.socket, upstream);
        },
        () => conn.socket.destroy(),
      );
    },
  });
  return { vendor, metrics };
}

function roundTrip(registry: string, port: number, payload: string): Promise<string> {
  return connect({ host: '127.0.0.1', port, registry }).then(
    (socket) =>
      new Promise<string>((resolve, reject) => {
        let reply = '';
        socket.setEncoding('utf8').on('data', (chunk: string) => (reply += chunk));
        socket.once('end', () => resolve(reply));
        socket.once('error', reject);
        socket.end(payload);
      }),
  );
}

describe('the vendor redirector', () => {
  it('relays through the vendor, merges its events after the redirector’s, and counts them in one registry', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const { vendor, metrics } = startEchoVendor({ id: uniqueId('kit'), priority: 10, match: { ports: [origin.port] }, registry: registry.path, tag: 'seen' });
    const events: (RedirectorEvent | EchoVendorEvent)[] = [];
    let completed = false;
    vendor.events$.subscribe({ next: (event) => events.push(event), complete: () => (completed = true) });

    const listening = await vendor.listening();
    expect(listening.port).toBeGreaterThan(0);
    expect(await roundTrip(registry.path, origin.port, 'ping')).toBe('ping');
    await until(() => events.some((e) => e.type === 'closed'), 5000, 'the closed event');

    const types = events.map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(['accepted', 'onward-connected', 'relayed', 'closed']));
    expect(types.indexOf('accepted')).toBeLessThan(types.indexOf('relayed'));
    const s = samples(await metrics.text());
    expect(s.get('echo_vendor_accepted_total{state="NotRedirected"}')).toBe(1);
    expect(s.get('echo_vendor_open_connections')).toBe(0);
    expect(s.get('echo_vendor_records_depth_sum')).toBe(1);
    expect(s.get('echo_vendor_bytes_total{direction="from_client"}')).toBe(4);
    expect(s.get('echo_vendor_bytes_total{direction="to_client"}')).toBe(4);
    expect(s.get('echo_vendor_relayed_total')).toBe(1);
    // The process's V8 heap, read at the scrape: a live process always has some.
    expect(s.get('echo_vendor_heap_used_bytes')).toBeGreaterThan(1_000_000);

    await vendor.close();
    await vendor.close();
    expect(completed).toBe(true);
    expect(vendor.closed).toBe(true);
  });

  it('counts refused connections and failed onward legs by code', async () => {
    using registry = tempRegistry();
    // A port nothing listens on (and no other test can take meanwhile): the onward leg is refused.
    await using refusing = await refusingPort();
    const closedPort = refusing.port;
    const { vendor, metrics } = startEchoVendor({ id: uniqueId('kit'), priority: 10, match: { ports: [closedPort] }, registry: registry.path, tag: 'x' });
    const listening = await vendor.listening();
    try {
      await roundTrip(registry.path, closedPort, 'ping').catch(() => '');
      // Bytes that are no PROXY header, straight to the listener: refused, nothing dialled.
      const raw = net.connect(listening.port, listening.address);
      raw.on('error', () => raw.destroy());
      raw.end('GET / HTTP/1.1\r\n\r\n');
      const counted = (s: Map<string, number>): boolean =>
        s.has('echo_vendor_onward_failed_total{code="ECONNREFUSED"}') && [...s.keys()].some((k) => k.startsWith('echo_vendor_rejected_total'));
      let s = samples(await metrics.text());
      for (const deadline = Date.now() + 5000; !counted(s) && Date.now() < deadline; s = samples(await metrics.text())) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      expect(s.get('echo_vendor_onward_failed_total{code="ECONNREFUSED"}')).toBe(1);
      expect([...s.entries()].filter(([k]) => k.startsWith('echo_vendor_rejected_total'))).toEqual([['echo_vendor_rejected_total{code="COPROXY_PROXY_HEADER_MALFORMED"}', 1]]);
    } finally {
      await vendor.close();
    }
  });

  it('throws at creation what createRedirector throws, and rejects listening() when the vendor’s own readiness fails', async () => {
    using registry = tempRegistry();
    const id = uniqueId('kit');
    const first = startEchoVendor({ id, priority: 10, registry: registry.path, tag: 'a' }).vendor;
    await first.listening();
    expect(() => startEchoVendor({ id, priority: 10, registry: registry.path, tag: 'b' })).toThrow(expect.objectContaining({ code: 'COPROXY_REDIRECTOR_ID_IN_USE' }));
    await first.close();

    const vendor = createVendorRedirector({
      options: { id: uniqueId('kit'), priority: 1, registry: registry.path },
      defaultMatch: {},
      onAccepted: (conn) => conn.socket.destroy(),
      // A CA, say, that turns out unusable: the vendor is not ready.
      ready: Promise.reject(new Error('CA unusable')),
    });
    await expect(vendor.listening()).rejects.toThrow('CA unusable');
    await vendor.close();
  });

  it('hands UDP flows to onDatagramFlow and TCP to onAccepted, and counts the flows and their datagrams apart from connections', async () => {
    using registry = tempRegistry();
    const origin = dgram.createSocket('udp4');
    origin.on('message', (payload, remote) => origin.send(Buffer.concat([Buffer.from('echo:'), payload]), remote.port, remote.address));
    origin.bind(0, '127.0.0.1');
    await once(origin, 'listening');
    const originPort = origin.address().port;
    const metrics = new RedirectorMetrics({ prefix: 'udp_vendor' });
    const seen: string[] = [];
    const vendor = createVendorRedirector({
      options: { id: uniqueId('kit'), priority: 10, registry: registry.path, match: { ports: [1], udpPorts: [originPort] } },
      defaultMatch: {},
      metrics,
      onAccepted: (conn) => {
        seen.push('tcp');
        conn.socket.destroy();
      },
      onDatagramFlow: (flow) => {
        seen.push(flow.transport);
        void flow.connectOnward().then((onward) => {
          flow.datagrams$.subscribe({ next: (payload) => onward.send(payload), complete: () => onward.close() });
          // One reply and the flow is over: the vendor closes it, so `closed` is not left to the idle timeout.
          onward.datagrams$.subscribe((payload) => {
            flow.send(payload);
            flow.close();
          });
        });
      },
    });
    const events: RedirectorEvent[] = [];
    vendor.events$.subscribe((event) => events.push(event));
    try {
      await vendor.listening();
      const socket = await connectDatagram({ host: '127.0.0.1', port: originPort, registry: registry.path });
      const reply = firstValueFrom(socket.datagrams$);
      socket.send(Buffer.from('ping'));
      expect((await reply).toString()).toBe('echo:ping');
      socket.close();
      await until(() => events.some((e) => e.type === 'closed'), 5000, 'the flow’s closed event');

      expect(seen).toEqual(['udp']);
      const s = samples(await metrics.text());
      expect(s.get('udp_vendor_udp_flows_total{state="NotRedirected"}')).toBe(1);
      expect(s.get('udp_vendor_open_udp_flows')).toBe(0);
      expect(s.get('udp_vendor_datagrams_total{direction="from_client"}')).toBe(1);
      expect(s.get('udp_vendor_datagrams_total{direction="to_client"}')).toBe(1);
      expect(s.get('udp_vendor_bytes_total{direction="from_client"}')).toBe(4);
      expect(s.get('udp_vendor_bytes_total{direction="to_client"}')).toBe(9);
      // No TCP connection was accepted: the TCP counters stay empty.
      expect([...s.keys()].filter((k) => k.startsWith('udp_vendor_accepted_total{'))).toEqual([]);
      expect(s.get('udp_vendor_open_connections')).toBe(0);
    } finally {
      await vendor.close();
      origin.close();
    }
  });

  it('refuses a rule with UDP ports for a vendor that gives no onDatagramFlow, so no UDP flow reaches a vendor that would not inspect it', () => {
    using registry = tempRegistry();
    expect(() =>
      createVendorRedirector({
        options: { id: uniqueId('kit'), priority: 1, registry: registry.path, match: { ports: [80], udpPorts: [443] } },
        defaultMatch: {},
        onAccepted: (conn) => conn.socket.destroy(),
      }),
    ).toThrow(/names udpPorts but this vendor takes no UDP flows/);
  });

  it('reports a redirector that cannot install to onFailed, and rejects listening() with the same error', async () => {
    using dir = tempRegistry();
    // The registry path is a file: the entry cannot be written.
    const notADirectory = path.join(dir.path, 'file');
    fs.writeFileSync(notADirectory, '');
    const failures: Error[] = [];
    const vendor = createVendorRedirector({
      options: { id: uniqueId('kit'), priority: 1, registry: notADirectory },
      defaultMatch: {},
      onAccepted: (conn) => conn.socket.destroy(),
      onFailed: (error) => failures.push(error),
    });
    const error = await vendor.listening().then(
      () => new Error('installed'),
      (caught: unknown) => caught,
    );
    await vendor.close();

    expect(error).toMatchObject({ code: 'COPROXY_REGISTRY_ERROR' });
    expect(failures).toEqual([error]);
  });
});

describe('serveMetrics', () => {
  it('serves GET /metrics from the registry in Prometheus text format, and 404 for anything else', async () => {
    const metrics = new RedirectorMetrics({ prefix: 'served' });
    metrics.accepted.inc({ state: 'RedirectedByOther' });
    const server = await serveMetrics(metrics.registry, '127.0.0.1', 0);
    const { port } = server.address() as net.AddressInfo;
    const get = (path: string): Promise<{ status: number; type: string; body: string }> =>
      new Promise((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port, path }, (res) => {
            let body = '';
            res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
            res.once('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
          })
          .once('error', reject);
      });
    try {
      const ok = await get('/metrics?x=1');
      expect(ok.status).toBe(200);
      expect(ok.type).toContain('text/plain');
      expect(ok.body).toContain('# TYPE served_accepted_total counter');
      expect(ok.body).toContain('served_accepted_total{state="RedirectedByOther"} 1');
      expect((await get('/')).status).toBe(404);
    } finally {
      server.close();
    }
  });

  it('refuses a prefix that would make invalid or mixed-case metric names', () => {
    expect(() => new RedirectorMetrics({ prefix: 'Acme' })).toThrow(TypeError);
    expect(() => new RedirectorMetrics({ prefix: 'acme-dlp' })).toThrow(TypeError);
    expect(new RedirectorMetrics({ prefix: 'acme_dlp' }).recordsDepth).toBeDefined();
  });
});
