import http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * The proxy's Prometheus metrics, in a registry of its own (two proxies in one process
 * do not mix their counts). prom-client is the Prometheus client the Node ecosystem uses;
 * its text format is what Prometheus scrapes.
 */
export class HttpProxyMetrics {
  readonly registry = new Registry();
  readonly connections = new Counter({
    name: 'coproxy_http_connections_total',
    help: 'Connections accepted, by kind: http (parsed), opaque (passed through byte for byte: TLS, or unrecognised under the relay policy) or blocked (unrecognised, closed unread)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly openConnections = new Gauge({
    name: 'coproxy_http_open_connections',
    help: 'Connections accepted and not yet closed',
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
  readonly bytes = new Counter({
    name: 'coproxy_http_bytes_total',
    help: 'Bytes relayed, on the client side of the proxy: from_client (received) or to_client (sent)',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'coproxy_http_errors_total',
    help: 'Failed exchanges and connections, by code (HPE_* parser codes, errno names, ORIGIN_TIMEOUT, ...)',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly recordsDepth = new Histogram({
    name: 'coproxy_http_records_depth',
    help: 'Redirects in the records of accepted connections, this proxy included',
    buckets: [1, 2, 3, 4, 6, 8, 16],
    registers: [this.registry],
  });

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** Serves `GET /metrics` in Prometheus text format; anything else is 404. */
export async function serveMetrics(metrics: HttpProxyMetrics, host: string, port: number): Promise<http.Server> {
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
