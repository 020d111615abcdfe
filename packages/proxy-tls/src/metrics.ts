import http from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';

/** The TLS proxy's Prometheus metrics, in a registry of its own. */
export class TlsProxyMetrics {
  readonly registry = new Registry();
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
  readonly openConnections = new Gauge({ name: 'coproxy_tls_open_connections', help: 'Connections accepted and not yet closed', registers: [this.registry] });
  readonly handshakes = new Counter({
    name: 'coproxy_tls_handshakes_total',
    help: 'ClientHellos inspected, by the action taken: splice, block, bump',
    labelNames: ['action'] as const,
    registers: [this.registry],
  });
  readonly exchanges = new Counter({ name: 'coproxy_tls_bumped_exchanges_total', help: 'Decrypted HTTP/1.1 exchanges in bump mode', registers: [this.registry] });
  readonly bytes = new Counter({
    name: 'coproxy_tls_bytes_total',
    help: 'Bytes on the client socket: from_client (received) or to_client (sent)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'coproxy_tls_errors_total',
    help: 'Failures by code: ClientHello parser codes, certificate errors, errno names',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Serves `GET /metrics` in Prometheus text format. */
export async function serveMetrics(metrics: TlsProxyMetrics, host: string, port: number): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('try GET /metrics\n');
      return;
    }
    metrics.text().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
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
