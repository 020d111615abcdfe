/**
 * @coproxy/core/vendor: the vendor kit, what every inspecting vendor needs besides the
 * redirector itself — standard CLI options, the main loop with signals and exit codes,
 * Prometheus metrics of the redirector's events, the redirector wiring, an error base.
 *
 * A subpath of its own, so that an app that only dials through the connector never loads
 * commander or prom-client. prom-client is an optional peer dependency: a vendor using
 * the kit's metrics depends on it itself, and the kit's metrics and the vendor's own then
 * share one prom-client.
 *
 * @example
 * ```ts
 * import { createVendorRedirector, RedirectorMetrics, runVendorCli } from '@coproxy/core/vendor';
 * ```
 */
export { VendorError, defineErrorCodes, errorCodeOf, ERROR_PREFIX_PATTERN } from './vendor-error.js';
export {
  addRedirectorOptions,
  addServiceOptions,
  integerOption,
  parsePorts,
  parseUdpPorts,
  parseEndpoint,
  redirectorOptionsFromCli,
  CliUsageError,
  CLI_BACKENDS,
  LOG_LEVELS,
} from './cli-options.js';
export type { RedirectorCliOptions, RedirectorCliDefaults, RedirectorCliSettings, LogLevel } from './cli-options.js';
export { RedirectorMetrics, serveMetrics } from './redirector-metrics.js';
export type { RedirectorMetricsOptions } from './redirector-metrics.js';
export { onShutdownSignal, SHUTDOWN_SIGNALS } from './shutdown.js';
export { runVendorCli, exitWith, ExitCode } from './vendor-cli.js';
export type { VendorCliSpec, VendorCliContext, VendorService, VendorLogger } from './vendor-cli.js';
export { createVendorRedirector, redirectorOptionsOf } from './vendor-redirector.js';
export type { VendorRedirector, VendorRedirectorOptions, VendorRedirectorSpec } from './vendor-redirector.js';
export { decide } from './http-inspection.js';
export type { Verdict, ConnectionInfo, RequestInfo, ResponseInfo, Inspector, Decision } from './http-inspection.js';
export { pathReadings, slowPathReadings, canonicalPathPattern } from './path-readings.js';
export { PerSecondLimit } from './per-second-limit.js';
export { H2FrameMeter, H2FrameScanner, H2_FRAME_BOUNDS, H2_CLIENT_PREFACE_LENGTH, meteredSocket } from './h2-frame-meter.js';
export type { H2FrameBounds } from './h2-frame-meter.js';
export { canonicalAuthority, canonicalRuleHost } from './authority.js';
export type { CanonicalAuthority } from './authority.js';
export { parseRules, loadRules, rulesInspector, RuleFileError } from './rules.js';
export type { Rule, RuleFile, RuleFileErrorFactory } from './rules.js';
