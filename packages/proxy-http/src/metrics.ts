import type http from 'node:http';
import { RedirectorMetrics, serveMetrics as serveRegistry } from '@coproxy/core/vendor';
import { Counter } from 'prom-client';

/**
 * The proxy's Prometheus metrics, in a registry of its own (two proxies in one process
 * do not mix their counts). The metrics of the redirector's events (open connections,
 * records depth, bytes, accepted, rejected, onward failures) come from core's vendor kit,
 * under the `coproxy_http` prefix; the HTTP ones are this vendor's.
 */
export class HttpProxyMetrics extends RedirectorMetrics {
  readonly connections = new Counter({
    name: 'coproxy_http_connections_total',
    help: 'Connections accepted, by kind: http (parsed), opaque (passed through byte for byte: TLS, or unrecognised under the relay policy) or blocked (unrecognised, closed unread)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly unrecognised = new Counter({
    name: 'coproxy_http_unrecognised_total',
    help: 'Connections neither HTTP nor TLS, or silent for the sniff timeout, by what the unrecognised policy did: block or relay',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly requests = new Counter({
    name: 'coproxy_http_requests_total',
    help: 'Request heads parsed, by method',
    labelNames: ['method'] as const,
    registers: [this.registry],
  });
  readonly verdicts = new Counter({
    name: 'coproxy_http_verdicts_total',
    help: 'Verdicts given to requests: allow, block, annotate',
    labelNames: ['verdict'] as const,
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'coproxy_http_errors_total',
    help: 'Failed exchanges and connections, by code (HPE_* parser codes, errno names, COPROXY_HTTP_ORIGIN_TIMEOUT, ...)',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor() {
    super({ prefix: 'coproxy_http' });
  }
}

/** Serves `GET /metrics` in Prometheus text format; anything else is 404. */
export function serveMetrics(metrics: HttpProxyMetrics, host: string, port: number): Promise<http.Server> {
  return serveRegistry(metrics.registry, host, port);
}
