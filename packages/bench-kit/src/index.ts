/**
 * @coproxy/bench-kit: shared by the benches of every coproxy package and never published.
 * It depends on Node alone, so a vendor's bench can use it without a vendor importing
 * another vendor, and core's bench without core depending on anything of ours.
 */
export { captureOutput, exited, exitedWithin, firstLine, readMemory, stopProcess, waitUntil } from './process.js';
export type { CapturedOutput, Memory } from './process.js';
export { serveForked, ForkedChildren } from './forked.js';
export type { ForkedService, Forked } from './forked.js';
export { describeError, positiveFromEnv, printRows, ratioText } from './report.js';
export { printProfileSummary } from './cpu-profile.js';
export type { ProfilePrintOptions } from './cpu-profile.js';
