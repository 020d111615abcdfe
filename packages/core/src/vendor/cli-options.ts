import { type Command, InvalidArgumentError, Option } from 'commander';
import { BACKEND_NAMES } from '../backends/backend-registry.js';
import type { PortSpec } from '../model/match-rule.js';
import type { BackendName, FailMode } from '../redirector/redirector-options.js';
import { VendorError } from './vendor-error.js';
import type { VendorRedirectorOptions } from './vendor-redirector.js';

/** The `--backend` choices: every backend in core's registry (one place for the names). */
export const CLI_BACKENDS: readonly BackendName[] = BACKEND_NAMES;

/** pino's levels, which both reference vendors log with. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** What `addRedirectorOptions` and `addServiceOptions` put into commander's `opts()`. */
export interface RedirectorCliOptions {
  readonly id: string;
  readonly priority: number;
  /** As typed: `80,8080` or `8000-8099`; `redirectorOptionsFromCli` parses it. */
  readonly ports: string;
  /** As typed, only when the vendor added `--udp-ports` (`RedirectorCliDefaults.udpPorts`); `''` or `none`: no UDP. */
  readonly udpPorts?: string;
  readonly backend: BackendName;
  readonly failMode: FailMode;
  /** Only with `addRedirectorOptions(program, { markMask: true })`. */
  readonly markMask?: number;
  /** `host:port`, only when given. */
  readonly metrics?: string;
  readonly logLevel: LogLevel;
}

export interface RedirectorCliDefaults {
  /** The `--ports` default, e.g. `'80,8080'`. */
  readonly ports: string;
  /**
   * Add `--udp-ports <list>` with this default (`'443'`, or `''` for no UDP unless asked):
   * for a vendor that takes UDP flows (`createVendorRedirector`'s `onDatagramFlow`).
   * Absent: no such option, the vendor is TCP only.
   */
  readonly udpPorts?: string;
  /** Default `'embedded'`. */
  readonly backend?: BackendName;
  /** The `--backend` choices; default {@link CLI_BACKENDS}. */
  readonly backends?: readonly BackendName[];
  /** Add `--mark-mask <mask>` (nftables: the socket-mark bits shared by every vendor). Default false. */
  readonly markMask?: boolean;
}

/** A command-line value a user typed wrong: the vendor CLI prints it and exits 2. */
export class CliUsageError extends VendorError<'COPROXY_CLI_USAGE'> {
  override readonly name = 'CliUsageError';
  constructor(
    /** The option at fault, e.g. `--ports`. */
    readonly option: string,
    message: string,
  ) {
    super('COPROXY_CLI_USAGE', message);
  }
}

/**
 * A commander argument parser for an integer in `min..max`; anything else is a usage
 * error commander reports with the option's name (exit 2 in a vendor CLI).
 */
export function integerOption(min: number, max: number): (text: string) => number {
  return (text) => {
    const value = Number(text);
    if (!/^-?\d+$/.test(text) || value < min || value > max) throw new InvalidArgumentError(`an integer in ${min}..${max}`);
    return value;
  };
}

/**
 * Adds the options every redirecting vendor takes: `--id`, `--priority`, `--ports`,
 * `--backend`, `--fail-mode` (and `--udp-ports`, `--mark-mask` on request). Vendor options come after;
 * then {@link addServiceOptions}.
 *
 * @example
 * ```ts
 * const program = addRedirectorOptions(new Command('acme-dlp'), { ports: '80' })
 *   .option('--word <word>', 'block flows whose first bytes contain it');
 * addServiceOptions(program);
 * ```
 */
export function addRedirectorOptions(program: Command, defaults: RedirectorCliDefaults): Command {
  program
    .requiredOption('--id <id>', 'redirector id, [a-z0-9-]{1,32}')
    .requiredOption('--priority <n>', 'lower runs first', integerOption(-(2 ** 31), 2 ** 31 - 1))
    .option('--ports <list>', 'destination ports to inspect, e.g. 80,8080 or 8000-8099', defaults.ports);
  if (defaults.udpPorts !== undefined) {
    program.option('--udp-ports <list>', "UDP destination ports to inspect, as --ports; 'none' for no UDP", defaults.udpPorts === '' ? 'none' : defaults.udpPorts);
  }
  program
    .addOption(new Option('--backend <name>', 'redirect layer').choices([...(defaults.backends ?? CLI_BACKENDS)]).default(defaults.backend ?? 'embedded'))
    .addOption(new Option('--fail-mode <mode>', 'while this proxy is down: open lets traffic through, closed refuses it').choices(['open', 'closed']).default('open'));
  if (defaults.markMask === true) {
    program.option('--mark-mask <mask>', 'nftables: the socket-mark bits every vendor on the host shares, e.g. 0xff000000 (default COPROXY_MARK_MASK)', parseMarkMask);
  }
  return program;
}

/** Adds `--metrics <host:port>` and `--log-level <level>` (default `info`). */
export function addServiceOptions(program: Command): Command {
  return program
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://<host:port>/metrics (port 0: any free port, named in the ready line)')
    .addOption(new Option('--log-level <level>', 'pino log level').choices([...LOG_LEVELS]).default('info'));
}

/** `80,8080,8000-8099` as a match rule's ports; a part that is no port or range is a `CliUsageError`. */
export function parsePorts(text: string): PortSpec[] {
  return text.split(',').map((part) => {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part.trim());
    const from = Number(m?.[1]);
    const to = m?.[2] === undefined ? from : Number(m[2]);
    if (m === null || from < 1 || to > 65535 || from > to) throw new CliUsageError('--ports', `'${part}' is not a port or a range`);
    return from === to ? from : [from, to];
  });
}

/** `--udp-ports`: as {@link parsePorts}; `''` or `none` is no UDP port (undefined). */
export function parseUdpPorts(text: string): PortSpec[] | undefined {
  if (text.trim() === '' || text.trim() === 'none') return undefined;
  try {
    return parsePorts(text);
  } catch (error) {
    if (error instanceof CliUsageError) throw new CliUsageError('--udp-ports', error.message);
    throw error;
  }
}

/**
 * `host:port` or `[v6]:port`; anything else is a `CliUsageError`. Port 0 asks for any free
 * port (the `ready` line names the one bound): a port chosen beforehand can be taken by
 * another program before the vendor binds it.
 */
export function parseEndpoint(text: string, option = '--metrics'): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(text);
  const port = Number(m?.[2]);
  if (m?.[1] === undefined || port < 0 || port > 65535) throw new CliUsageError(option, `'${text}' is not host:port`);
  return { host: m[1], port };
}

function parseMarkMask(text: string): number {
  const value = /^(0x[0-9a-f]{1,8}|\d{1,10})$/i.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(value) || value <= 0 || value > 0xffffffff) throw new InvalidArgumentError('a non-zero 32-bit mask, e.g. 0xff000000');
  return value;
}

/** The parsed command line as redirector options, plus where to serve metrics. */
export interface RedirectorCliSettings {
  readonly redirector: VendorRedirectorOptions & { readonly match: { readonly ports: PortSpec[]; readonly udpPorts?: PortSpec[] } };
  readonly ports: PortSpec[];
  /** `--udp-ports` parsed; undefined when the vendor has no such option or it is `none`. */
  readonly udpPorts: PortSpec[] | undefined;
  readonly metrics: { host: string; port: number } | undefined;
}

/**
 * Turns commander's parsed options into redirector options. Throws `CliUsageError` for a
 * bad `--ports`, `--udp-ports` or `--metrics`; the rest commander has checked already.
 *
 * @example
 * ```ts
 * const { redirector, metrics } = redirectorOptionsFromCli(program.opts<RedirectorCliOptions>());
 * const proxy = createMyProxy({ ...redirector, word: options.word });
 * ```
 */
export function redirectorOptionsFromCli(options: RedirectorCliOptions): RedirectorCliSettings {
  const ports = parsePorts(options.ports);
  const udpPorts = options.udpPorts === undefined ? undefined : parseUdpPorts(options.udpPorts);
  const metrics = options.metrics === undefined ? undefined : parseEndpoint(options.metrics);
  return {
    redirector: {
      id: options.id,
      priority: options.priority,
      match: { ports, ...(udpPorts !== undefined && { udpPorts }) },
      backend: options.backend,
      failMode: options.failMode,
      ...(options.markMask !== undefined && { markMask: options.markMask }),
    },
    ports,
    udpPorts,
    metrics,
  };
}
