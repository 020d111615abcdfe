import type http from 'node:http';
import { type Command, CommanderError, InvalidArgumentError } from 'commander';
import type { Registry } from 'prom-client';
import type { Observable } from 'rxjs';
import type { Endpoint } from '../backends/backend.js';
import type { AcceptedEvent } from '../redirector/redirector-events.js';
import { CliUsageError, type RedirectorCliOptions, type RedirectorCliSettings, redirectorOptionsFromCli } from './cli-options.js';
import { serveMetrics } from './redirector-metrics.js';
import { onShutdownSignal } from './shutdown.js';

/** Exit codes of a vendor CLI. */
export const ExitCode = {
  /** A clean stop on SIGINT or SIGTERM (or `--help`). */
  Ok: 0,
  /** The service failed: install refused, listener lost, close failed. */
  Failure: 1,
  /** A usage error: an option, or a file an option names, is invalid. */
  Usage: 2,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** What the kit logs through: pino's `Logger` fits, and so does any logger of the same shape. */
export interface VendorLogger {
  info(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/** What a vendor's `start` gives the main loop: its proxy, seen from outside. */
export interface VendorService {
  /** The redirector's events (the kit logs each `accepted` one) and any of the vendor's. */
  readonly events$: Observable<{ readonly type: string }>;
  /** Served at `--metrics`. */
  readonly registry: Registry;
  /** Resolves once the service accepts connections; rejects when it cannot start. */
  listening(): Promise<Endpoint>;
  close(): Promise<void>;
  /** A stream that errors when the service stops by itself after it started (exit 1). */
  readonly failures$?: Observable<unknown>;
}

export interface VendorCliContext<TOptions extends RedirectorCliOptions, TLogger extends VendorLogger = VendorLogger> {
  /** commander's `opts()`, the vendor's own options included. */
  readonly options: TOptions;
  /** `options` parsed: redirector options to spread into the vendor's, where to serve metrics. */
  readonly settings: RedirectorCliSettings;
  /** The vendor's own logger, as `logger` made it. */
  readonly logger: TLogger;
}

export interface VendorCliSpec<TOptions extends RedirectorCliOptions, TLogger extends VendorLogger = VendorLogger> {
  /** The command's name, prefixed to what it writes to stderr: `coproxy-http: …`. */
  readonly name: string;
  /** The command, with `addRedirectorOptions` and `addServiceOptions`; the kit adds `exitOverride()`. */
  readonly program: Command;
  /** The logger, from the parsed options (its level, the id). */
  readonly logger: (options: TOptions) => TLogger;
  /** Creates the proxy. A throw is printed; exit 2 when it is a usage error, else 1. */
  readonly start: (context: VendorCliContext<TOptions, TLogger>) => VendorService | Promise<VendorService>;
  /** Errors of the vendor's own that mean "the operator typed or wrote something wrong" (exit 2). */
  readonly isUsageError?: (error: unknown) => boolean;
  /** More fields of the `ready` log line. */
  readonly readyFields?: (context: VendorCliContext<TOptions, TLogger>) => Record<string, unknown>;
  /** The user's arguments; default `process.argv` (node and script first). */
  readonly argv?: readonly string[];
}

/** The kit's usage errors, commander's, core's invalid options, then the vendor's own. */
function isUsage(error: unknown, vendor: ((error: unknown) => boolean) | undefined): boolean {
  return (
    error instanceof CliUsageError ||
    error instanceof InvalidArgumentError ||
    (error as { code?: unknown } | null)?.code === 'COPROXY_INVALID_OPTIONS' ||
    vendor?.(error) === true
  );
}

/**
 * The main loop of a vendor's command: parses the command line, starts the vendor's
 * proxy, logs `accepted` (one line per accepted connection: what the redirect layer told
 * this vendor), `ready`, `shutting down`; serves `--metrics`; on SIGINT/SIGTERM closes
 * and resolves 0. Resolves 1 when the proxy fails, 2 for a usage error. Give the result
 * to {@link exitWith}.
 *
 * @example
 * ```ts
 * const program = addServiceOptions(addRedirectorOptions(new Command('acme'), { ports: '80' }).option('--word <w>', '…'));
 * exitWith('acme', runVendorCli<AcmeCliOptions, pino.Logger>({
 *   name: 'acme',
 *   program,
 *   logger: (o) => pino({ level: o.logLevel, base: { service: 'acme', id: o.id } }),
 *   start: ({ options, settings, logger }) => {
 *     const proxy = createAcme({ ...settings.redirector, word: options.word, logger });
 *     return { events$: proxy.events$, registry: proxy.metrics.registry, listening: () => proxy.listening(), close: () => proxy.close() };
 *   },
 * }));
 * ```
 */
export async function runVendorCli<TOptions extends RedirectorCliOptions, TLogger extends VendorLogger = VendorLogger>(
  spec: VendorCliSpec<TOptions, TLogger>,
): Promise<ExitCode> {
  const program = spec.program.exitOverride();
  try {
    if (spec.argv === undefined) program.parse();
    else program.parse([...spec.argv], { from: 'user' });
  } catch (error) {
    if (error instanceof CommanderError) return error.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    throw error;
  }
  const options = program.opts<TOptions>();
  const logger = spec.logger(options);
  const fail = (error: unknown): ExitCode => {
    process.stderr.write(`${spec.name}: ${error instanceof Error ? error.message : String(error)}\n`);
    return isUsage(error, spec.isUsageError) ? ExitCode.Usage : ExitCode.Failure;
  };
  let context: VendorCliContext<TOptions, TLogger>;
  let service: VendorService;
  try {
    context = { options, settings: redirectorOptionsFromCli(options), logger };
    service = await spec.start(context);
  } catch (error) {
    return fail(error);
  }
  service.events$.subscribe((event) => {
    if (event.type !== 'accepted') return;
    const { connectionId, source, originalDestination: destination, state, redirectedBy, transport } = event as AcceptedEvent;
    // A UDP flow's line says so; a TCP connection's stays as it was.
    logger.info({ connectionId, source: { address: source.address, port: source.port }, destination, state, redirectedBy, ...(transport !== undefined && { transport }) }, 'accepted');
  });
  const metricsAt = context.settings.metrics;
  let metricsServer: http.Server | undefined;
  try {
    metricsServer = metricsAt === undefined ? undefined : await serveMetrics(service.registry, metricsAt.host, metricsAt.port);
  } catch (error) {
    // A metrics port that cannot be bound (taken, not ours): the service just started goes too.
    logger.error({ err: error, metrics: metricsAt }, 'could not start');
    await service.close().catch((closeError: unknown) => logger.error({ err: closeError }, 'close failed'));
    return fail(error);
  }
  let removeSignalListeners = (): void => undefined;
  const stopped = new Promise<ExitCode>((resolve) => {
    removeSignalListeners = onShutdownSignal((signal) => {
      logger.info({ signal }, 'shutting down');
      metricsServer?.close();
      service.close().then(
        () => resolve(ExitCode.Ok),
        (error: unknown) => {
          logger.error({ err: error }, 'close failed');
          resolve(ExitCode.Failure);
        },
      );
    });
  });
  try {
    try {
      const listening = await service.listening();
      // Where the metrics are served: the port bound, which `--metrics host:0` leaves to the system.
      const metricsBound = metricsServer?.address();
      const metrics = metricsAt !== undefined && typeof metricsBound === 'object' && metricsBound !== null ? { host: metricsAt.host, port: metricsBound.port } : metricsAt;
      logger.info({ listening, backend: options.backend, ...spec.readyFields?.(context), metrics }, 'ready');
    } catch (error) {
      logger.error({ err: error }, 'could not start');
      metricsServer?.close();
      return ExitCode.Failure;
    }
    const failed = new Promise<ExitCode>((resolve) => {
      service.failures$?.subscribe({
        error: (error: unknown) => {
          logger.error({ err: error }, 'the proxy stopped');
          resolve(ExitCode.Failure);
        },
      });
    });
    return await Promise.race([stopped, failed]);
  } finally {
    // The process exits right after (exitWith); removing them matters to in-process callers.
    removeSignalListeners();
  }
}

/**
 * Exits the process with the code `run` resolves to, once stdout has been flushed (pino
 * writes asynchronously); an unexpected throw prints `name: error` and exits 1.
 */
export function exitWith(name: string, run: Promise<number>): void {
  run.then(
    (code) => {
      process.exitCode = code;
      setImmediate(() => process.exit(code));
    },
    (error: unknown) => {
      process.stderr.write(`${name}: ${String(error)}\n`);
      process.exit(ExitCode.Failure);
    },
  );
}
