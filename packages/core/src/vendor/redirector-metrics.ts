import http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Observable, Subscription } from 'rxjs';
import { unreachable } from '../model/errors.js';
import type { RedirectorEvent } from '../redirector/redirector-events.js';
import { ERROR_PREFIX_PATTERN, errorCodeOf } from './vendor-error.js';

export interface RedirectorMetricsOptions {
  /** Every metric's name starts with it and `_`: lower snake case, e.g. `acme_dlp`. */
  readonly prefix: string;
  /** The registry to register into; default a new one (two proxies in one process do not mix counts). */
  readonly registry?: Registry;
}

/** Buckets of the records-depth histogram: a chain is rarely more than a few vendors long. */
const DEPTH_BUCKETS = [1, 2, 3, 4, 6, 8, 16];

/**
 * Prometheus metrics of a redirector's events, in a registry the vendor registers its own
 * metrics into too. Names, under the vendor's `prefix`:
 *
 * | metric | type | from the event |
 * |---|---|---|
 * | `<prefix>_accepted_total{state}` | counter | `accepted` (TCP), by redirect state |
 * | `<prefix>_open_connections` | gauge | `accepted` up, `closed` down (TCP) |
 * | `<prefix>_udp_flows_total{state}` | counter | `accepted` with `transport: 'udp'`, by redirect state |
 * | `<prefix>_open_udp_flows` | gauge | the same, `accepted` up, `closed` down |
 * | `<prefix>_datagrams_total{direction}` | counter | `closed` of a UDP flow: `from_client`, `to_client` |
 * | `<prefix>_records_depth` | histogram | `accepted` (both): redirects in its records, this one included |
 * | `<prefix>_bytes_total{direction}` | counter | `closed` (both; a UDP flow's datagram payloads): `from_client`, `to_client` |
 * | `<prefix>_rejected_total{code}` | counter | `rejected`, by error code |
 * | `<prefix>_onward_failed_total{code}` | counter | `onward-failed`, by error code |
 * | `<prefix>_heap_used_bytes` | gauge | none: the process's V8 heap in use, read when scraped (leak checks, the bench's soak) |
 *
 * @example
 * ```ts
 * class AcmeMetrics extends RedirectorMetrics {
 *   readonly blocked = new Counter({ name: 'acme_blocked_total', help: 'Flows blocked', registers: [this.registry] });
 *   constructor() {
 *     super({ prefix: 'acme' });
 *   }
 * }
 * const metrics = new AcmeMetrics();
 * metrics.track(redirector.events$);
 * await serveMetrics(metrics.registry, '127.0.0.1', 9464);
 * ```
 */
export class RedirectorMetrics {
  readonly registry: Registry;
  readonly accepted: Counter<'state'>;
  readonly openConnections: Gauge;
  readonly udpFlows: Counter<'state'>;
  readonly openUdpFlows: Gauge;
  readonly datagrams: Counter<'direction'>;
  readonly recordsDepth: Histogram;
  readonly bytes: Counter<'direction'>;
  readonly rejected: Counter<'code'>;
  readonly onwardFailed: Counter<'code'>;
  readonly heapUsed: Gauge;

  constructor(options: RedirectorMetricsOptions) {
    const prefix = options.prefix;
    // Prometheus names are [a-zA-Z_:][a-zA-Z0-9_:]*; a vendor prefix is the lower-case form
    // of its error prefix.
    if (!ERROR_PREFIX_PATTERN.test(prefix.toUpperCase()) || prefix !== prefix.toLowerCase()) {
      throw new TypeError(`metrics prefix '${prefix}' is not lower snake case`);
    }
    const registry = (this.registry = options.registry ?? new Registry());
    this.accepted = new Counter({
      name: `${prefix}_accepted_total`,
      help: 'Connections the redirect layer handed to this proxy, by redirect state (NotRedirected, RedirectedByOther)',
      labelNames: ['state'] as const,
      registers: [registry],
    });
    this.openConnections = new Gauge({ name: `${prefix}_open_connections`, help: 'Connections accepted and not yet closed', registers: [registry] });
    this.udpFlows = new Counter({
      name: `${prefix}_udp_flows_total`,
      help: 'UDP flows (one per client address and port, to one destination) the redirect layer handed to this proxy, by redirect state',
      labelNames: ['state'] as const,
      registers: [registry],
    });
    this.openUdpFlows = new Gauge({ name: `${prefix}_open_udp_flows`, help: 'UDP flows accepted and not yet ended', registers: [registry] });
    this.datagrams = new Counter({
      name: `${prefix}_datagrams_total`,
      help: 'Datagrams of ended UDP flows on the client side: from_client (received) or to_client (sent)',
      labelNames: ['direction'] as const,
      registers: [registry],
    });
    this.recordsDepth = new Histogram({
      name: `${prefix}_records_depth`,
      help: 'Redirects in the records of accepted connections, this proxy included',
      buckets: DEPTH_BUCKETS,
      registers: [registry],
    });
    this.bytes = new Counter({
      name: `${prefix}_bytes_total`,
      help: 'Bytes on the client socket, redirect-layer framing excluded: from_client (received) or to_client (sent)',
      labelNames: ['direction'] as const,
      registers: [registry],
    });
    this.rejected = new Counter({
      name: `${prefix}_rejected_total`,
      help: 'Connections refused by the redirector before any inspection (bad header, unauthorised peer, destination outside the rule), by code',
      labelNames: ['code'] as const,
      registers: [registry],
    });
    this.onwardFailed = new Counter({
      name: `${prefix}_onward_failed_total`,
      help: 'Onward connections that could not be opened, by code (errno names, COPROXY_CONNECT_TIMEOUT, ...)',
      labelNames: ['code'] as const,
      registers: [registry],
    });
    this.heapUsed = new Gauge({
      name: `${prefix}_heap_used_bytes`,
      help: 'V8 heap in use by the process (process.memoryUsage().heapUsed), read when scraped',
      registers: [registry],
      collect() {
        this.set(process.memoryUsage().heapUsed);
      },
    });
  }

  /** Counts one redirector event. */
  observe(event: RedirectorEvent): void {
    switch (event.type) {
      case 'accepted':
        if (event.transport === 'udp') {
          this.udpFlows.inc({ state: event.state });
          this.openUdpFlows.inc();
        } else {
          this.accepted.inc({ state: event.state });
          this.openConnections.inc();
        }
        this.recordsDepth.observe(event.redirectedBy.length);
        return;
      case 'closed':
        if (event.transport === 'udp') {
          this.openUdpFlows.dec();
          this.datagrams.inc({ direction: 'from_client' }, event.datagramsFromClient ?? 0);
          this.datagrams.inc({ direction: 'to_client' }, event.datagramsToClient ?? 0);
        } else {
          this.openConnections.dec();
        }
        this.bytes.inc({ direction: 'from_client' }, event.bytesFromClient);
        this.bytes.inc({ direction: 'to_client' }, event.bytesToClient);
        return;
      case 'rejected':
        this.rejected.inc({ code: event.error.code });
        return;
      case 'onward-failed':
        this.onwardFailed.inc({ code: errorCodeOf(event.error, 'UNKNOWN') });
        return;
      case 'installed':
      case 'uninstalled':
      case 'onward-connected':
        return;
      default:
        return unreachable(event);
    }
  }

  /** Counts every event of `events$` until the subscription ends. */
  track(events$: Observable<RedirectorEvent>): Subscription {
    return events$.subscribe((event) => this.observe(event));
  }

  /** The Prometheus text format of the whole registry, the vendor's own metrics included. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/**
 * Serves `GET /metrics` of `registry` in Prometheus text format; anything else is 404.
 * Resolves once listening; close the server to stop.
 *
 * @example
 * ```ts
 * const server = await serveMetrics(metrics.registry, '127.0.0.1', 9464);
 * // curl http://127.0.0.1:9464/metrics
 * server.close();
 * ```
 */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('try GET /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (error: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(error)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
