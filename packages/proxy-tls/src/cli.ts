#!/usr/bin/env node
import { BACKEND_NAMES, type BackendName } from '@coproxy/core';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import pino from 'pino';
import { serveMetrics } from './metrics.js';
import { PolicyError } from './policy.js';
import { createTlsProxy } from './proxy.js';

/**
 * coproxy-tls: the TLS proxy as a service.
 *
 * Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the proxy fails (install
 * refused, CA unusable, listener lost), 2 for a usage error or an invalid policy file.
 */
const integer = (min: number, max: number) => (text: string): number => {
  const value = Number(text);
  if (!/^-?\d+$/.test(text) || value < min || value > max) throw new InvalidArgumentError(`an integer in ${min}..${max}`);
  return value;
};

const program = new Command('coproxy-tls')
  .description('A transparent inspecting TLS proxy (splice, block, bump) that cooperates with other coproxy vendors through redirect records')
  .requiredOption('--id <id>', 'redirector id, [a-z0-9-]{1,32}')
  .requiredOption('--priority <n>', 'lower runs first', integer(-(2 ** 31), 2 ** 31 - 1))
  .option('--ports <list>', 'destination ports to inspect, e.g. 443,8443', '443')
  .addOption(new Option('--backend <name>', 'redirect layer').choices(BACKEND_NAMES).default('embedded'))
  .addOption(new Option('--fail-mode <mode>', 'while this proxy is down: open lets traffic through, closed refuses it').choices(['open', 'closed']).default('open'))
  .option('--policy <file>', 'JSON policy file (see the README); default: splice everything')
  .option('--ca-dir <dir>', 'where the bump CA lives (ca.crt to trust, ca.key mode 0600); created on first use')
  .option('--origin-ca <file>', 'PEM bundle to verify origins with in bump mode (default: the system store)')
  .option('--metrics <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics')
  .addOption(
    new Option('--unrecognised <action>', 'first bytes that are neither TLS nor HTTP/1.x or the HTTP/2 preface (and silent clients): block closes them, relay passes them on uninspected')
      .choices(['block', 'relay'])
      .default('block'),
  )
  .addOption(
    new Option('--unbumpable <action>', 'a bump the client makes impossible (only ALPN protocols bump does not speak, or ECH): block answers access_denied, splice relays it uninspected')
      .choices(['block', 'splice'])
      .default('block'),
  )
  .option('--drop-records', 'onward connections carry only this proxy\'s own redirect (to demonstrate the loop records prevent)')
  .addOption(new Option('--log-level <level>', 'pino log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'))
  .exitOverride()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });

interface CliOptions {
  id: string;
  priority: number;
  ports: string;
  backend: BackendName;
  failMode: 'open' | 'closed';
  policy?: string;
  caDir?: string;
  originCa?: string;
  metrics?: string;
  logLevel: string;
  dropRecords?: boolean;
  unrecognised: 'block' | 'relay';
  unbumpable: 'block' | 'splice';
}

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

async function main(): Promise<number> {
  try {
    program.parse();
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? 0 : 2;
    throw error;
  }
  const options = program.opts<CliOptions>();
  const logger = pino({ level: options.logLevel, base: { service: 'coproxy-tls', id: options.id } });
  let proxy;
  let metricsAt: { host: string; port: number } | undefined;
  try {
    metricsAt = options.metrics === undefined ? undefined : parseEndpoint(options.metrics);
    const { readFileSync } = await import('node:fs');
    proxy = createTlsProxy({
      id: options.id,
      priority: options.priority,
      match: { ports: parsePorts(options.ports) },
      backend: options.backend,
      failMode: options.failMode,
      propagateRecords: options.dropRecords !== true,
      unrecognised: options.unrecognised,
      unbumpable: options.unbumpable,
      ...(options.policy !== undefined && { policy: options.policy }),
      ...(options.caDir !== undefined && { ca: { dir: options.caDir } }),
      ...(options.originCa !== undefined && { originCa: readFileSync(options.originCa) }),
      logger,
    });
  } catch (error) {
    process.stderr.write(`coproxy-tls: ${(error as Error).message}\n`);
    const usage = error instanceof PolicyError || error instanceof InvalidArgumentError || error instanceof TypeError;
    return usage || (error as { code?: string }).code === 'COPROXY_INVALID_OPTIONS' ? 2 : 1;
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
    // `on`, not `once`: a `once` listener is removed before it runs, and the nftables
    // backend's own listener, seeing no other, would then remove the table and re-raise
    // the signal, killing the process before close() ends (exit by signal, not 0).
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  try {
    logger.info({ listening: await proxy.listening(), backend: options.backend, metrics: metricsAt }, 'ready');
  } catch (error) {
    logger.error({ err: error }, 'could not start');
    metricsServer?.close();
    return 1;
  }
  const failed = new Promise<number>((resolve) => {
    proxy.handshakes$.subscribe({
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
    process.exitCode = code;
    setImmediate(() => process.exit(code));
  },
  (error: unknown) => {
    process.stderr.write(`coproxy-tls: ${String(error)}\n`);
    process.exit(1);
  },
);
