/**
 * @coproxy/proxy-http: a transparent inspecting HTTP/1.1 proxy, one vendor's product built
 * on @coproxy/core's public API only.
 */
export { createHttpProxy } from './proxy.js';
export type { HttpProxy, HttpProxyOptions } from './proxy.js';
export type { HttpExchange, HttpProxyEvent, UnrecognisedPolicy } from './events.js';
export type { Inspector, Verdict, Decision, RequestInfo, ResponseInfo, ConnectionInfo } from './inspector.js';
export { parseRules, loadRules, rulesInspector } from './rules.js';
export type { Rule, RuleFile } from './rules.js';
export { HttpProxyMetrics, serveMetrics } from './metrics.js';
export { HttpProxyError, RulesError, HttpProxyOptionsError, AnnotationRefusedError, ProxyErrorCode } from './errors.js';
export { classify as classifyFirstBytes } from './sniff.js';
export type { FirstBytes } from './sniff.js';
export { RequestViewCode, RequestViewError, canonicalAuthority, pathReadings } from './canonical-request.js';
