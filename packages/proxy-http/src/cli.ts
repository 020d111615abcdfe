#!/usr/bin/env node
import { BACKEND_NAMES, type BackendName } from '@coproxy/core';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import pino from 'pino';
import { RulesError } from './errors.js';
import { serveMetrics } from './metrics.js';
import { createHttpProxy } from './proxy.js';

/**
 * coproxy-http: the proxy as a service.
 *
 * Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the proxy fails (install
 * refused, listener lost), 2 for a usage error or an invalid rule file.
 */
const integer = (min: number, max: number) => (text: string): number => {
  const value = Number(text);
  if (!/^-?\d+$/.test(text) || value < min || value > max) throw new InvalidArgumentError(`an integer in ${min}..${max}`);
  return value;
};

const program = new Command('coproxy-http')
  .description('A transparent inspecting HTTP/1.1 proxy that cooperates with other coproxy vendors through redirect records')
  .requiredOption('--id <id>', 'redirector id, [a-z0-9-]{1,32}')
  .requiredOption('--priority <n>', 'lower runs first', integer(-(2 ** 31), 2 ** 31 - 1))
  .option('--ports <list>', 'destination ports to inspect, e.g. 80,8080 or 8000-8099', '80,8080')
  .addOption(new Option('--backend <name>', 'redirect layer').choices(BACKEND_NAMES).default('embedded'))
  .addOption(new Option('--fail-mode <mode>', 'while this proxy is down: open lets traffic through, closed refuses it').choices(['open', 'closed']).default('open'))
  .option('--rules <file>', 'JSON rule file (see the README)')
  .option('--metrics <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics')
  .addOption(new Option('--log-level <level>', 'pino log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'))
  .option('--origin-timeout <ms>', 'no response from the origin within this long: 504', integer(1, 3_600_000), 30_000)
  .option('--connect-timeout <ms>', 'no connection to the origin within this long: 504', integer(1, 3_600_000), 10_000)
  .addOption(
    new Option('--unrecognised <policy>', 'connections neither HTTP nor TLS, or silent for the sniff timeout: block closes them, relay passes them through (logged and counted either way)')
      .choices(['block', 'relay'])
      .default('block'),
  )
  .option('--max-body-size <bytes>', 'largest request body: a larger Content-Length or chunk sizes get 413', integer(1, Number.MAX_SAFE_INTEGER), 2 ** 40)
  .option('--drop-records', 'onward connections carry only this proxy\'s own redirect (to demonstrate the loop records prevent)')
  .exitOverride()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });

function parsePorts(text: string): (number | [number, number])[] {
  return text.split(',').map((part) => {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part.trim());
    const from = Number(m?.[1]);
    const to = m?.[2] === undefined ? from : Number(m[2]);
    if (m === null || from < 1 || to > 65535 || from > to) throw new InvalidArgumentError(`'${part}' is not a port or a range`);
    return from === to ? from : [from, to];
  });
}

function parseEndpoint(text: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(text);
  const port = Number(m?.[2]);
  if (m?.[1] === undefined || port < 1 || port > 65535) throw new InvalidArgumentError(`'${text}' is not host:port`);
  return { host: m[1], port };
}

interface CliOptions {
  id: string;
  priority: number;
  ports: string;
  backend: BackendName;
  failMode: 'open' | 'closed';
  rules?: string;
  metrics?: string;
  logLevel: string;
  originTimeout: number;
  connectTimeout: number;
  unrecognised: 'block' | 'relay';
  maxBodySize: number;
  dropRecords?: boolean;
}

async function main(): Promise<number> {
  try {
    program.parse();
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    throw error;
  }
  const options = program.opts<CliOptions>();
  const logger = pino({ level: options.logLevel, base: { service: 'coproxy-http', id: options.id } });
  let ports: (number | [number, number])[];
  let metricsAt: { host: string; port: number } | undefined;
  try {
    ports = parsePorts(options.ports);
    metricsAt = options.metrics === undefined ? undefined : parseEndpoint(options.metrics);
  } catch (error) {
    process.stderr.write(`coproxy-http: ${(error as Error).message}\n`);
    return 2;
  }
  let proxy;
  try {
    proxy = createHttpProxy({
      id: options.id,
      priority: options.priority,
      match: { ports },
      backend: options.backend,
      failMode: options.failMode,
      ...(options.rules !== undefined && { rules: options.rules }),
      originTimeoutMs: options.originTimeout,
      propagateRecords: options.dropRecords !== true,
      connectTimeoutMs: options.connectTimeout,
      unrecognised: options.unrecognised,
      maxBodySize: options.maxBodySize,
      logger,
    });
  } catch (error) {
    process.stderr.write(`coproxy-http: ${(error as Error).message}\n`);
    return error instanceof RulesError || (error as { code?: string }).code === 'COPROXY_INVALID_OPTIONS' ? 2 : 1;
  }
  // One line per accepted connection: what the redirect layer told this vendor.
  proxy.events$.subscribe((event) => {
    if (event.type !== 'accepted') return;
    const { connectionId, source, originalDestination: destination, state, redirectedBy } = event;
    logger.info({ connectionId, source: { address: source.address, port: source.port }, destination, state, redirectedBy }, 'accepted');
  });
  const metricsServer = metricsAt === undefined ? undefined : await serveMetrics(proxy.metrics, metricsAt.host, metricsAt.port);
  const stopped = new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'shutting down');
      metricsServer?.close();
      proxy.close().then(
        () => resolve(0),
        (error: unknown) => {
          logger.error({ err: error }, 'close failed');
          resolve(1);
        },
      );
    };
    // Registered for good (`on`, and `stop` runs once): the nftables backend's own hook
    // counts the process's listeners, and one that finds none removes the tables and
    // re-raises the signal, so the process would die by it instead of exiting 0.
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  try {
    const listening = await proxy.listening();
    logger.info({ listening, backend: options.backend, ports, metrics: metricsAt, unrecognised: options.unrecognised }, 'ready');
  } catch (error) {
    logger.error({ err: error }, 'could not start');
    metricsServer?.close();
    return 1;
  }
  const failed = new Promise<number>((resolve) => {
    proxy.exchanges$.subscribe({
      error: (error: unknown) => {
        logger.error({ err: error }, 'the proxy stopped');
        resolve(1);
      },
    });
  });
  return Promise.race([stopped, failed]);
}

main().then(
  (code) => {
    // Flushes pino's stdout before exiting.
    process.exitCode = code;
    setImmediate(() => process.exit(code));
  },
  (error: unknown) => {
    process.stderr.write(`coproxy-http: ${String(error)}\n`);
    process.exit(1);
  },
);
