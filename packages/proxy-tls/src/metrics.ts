import type http from 'node:http';
import { RedirectorMetrics, serveMetrics as serveRegistry } from '@coproxy/core/vendor';
import { Counter } from 'prom-client';

/**
 * The TLS proxy's Prometheus metrics, in a registry of its own. The metrics of the
 * redirector's events (open connections, bytes, records depth, accepted, rejected, onward
 * failures, UDP flows and datagrams) come from core's vendor kit under the `coproxy_tls` prefix; the TLS ones are
 * this vendor's.
 */
export class TlsProxyMetrics extends RedirectorMetrics {
  readonly connections = new Counter({
    name: 'coproxy_tls_connections_total',
    help: 'Connections accepted, by kind: tls (a ClientHello was read), http1 or h2 (recognised, relayed), opaque (neither: see coproxy_tls_unrecognised_total)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly unrecognised = new Counter({
    name: 'coproxy_tls_unrecognised_total',
    help: 'Connections whose first bytes were neither TLS nor a recognised protocol (or a TLS-looking stream that is no ClientHello, or a silent client), by what the unrecognised policy did: block or relay',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly handshakes = new Counter({
    name: 'coproxy_tls_handshakes_total',
    help: 'ClientHellos inspected, by the action taken: splice, block, bump',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly quicFlows = new Counter({
    name: 'coproxy_tls_quic_flows_total',
    help: 'QUIC flows whose Initial ClientHello was read, by the action taken: relay or block (a bump policy blocks QUIC so that the client falls back to TCP); unreadable ones count in coproxy_tls_unrecognised_total',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly exchanges = new Counter({ name: 'coproxy_tls_bumped_exchanges_total', help: 'Decrypted HTTP/1.1 exchanges in bump mode', registers: [this.registry] });
  readonly errors = new Counter({
    name: 'coproxy_tls_errors_total',
    help: 'Failures by code: ClientHello parser codes, certificate errors, errno names',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor() {
    super({ prefix: 'coproxy_tls' });
  }
}

/** Serves `GET /metrics` in Prometheus text format. */
export function serveMetrics(metrics: TlsProxyMetrics, host: string, port: number): Promise<http.Server> {
  return serveRegistry(metrics.registry, host, port);
}
