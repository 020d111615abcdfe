/**
 * @coproxy/proxy-tls: a transparent inspecting TLS proxy (peek, splice, block, bump), a
 * second vendor's product built on @coproxy/core's public API only.
 */
export { createTlsProxy } from './proxy.js';
export type { TlsProxy } from './proxy.js';
export type { TlsProxyOptions } from './options.js';
export type { Handshake, QuicHandshake, QuicAction, TlsExchange, BumpProtocol, TlsProxyEvent, UnrecognisedAction, UnbumpableAction, UnrecognisedReason, RelayedProtocol } from './events.js';
export { tlsAlertRecord, alertRecord } from './tls-alert.js';
export { TlsProxyError, TlsErrorCode } from './errors.js';
export { classifyFirstBytes, MAX_REQUEST_LINE } from './first-bytes.js';
export type { FirstBytesKind } from './first-bytes.js';
export { parseClientHello, parseClientHelloMessage, ClientHelloError, isGrease } from './client-hello.js';
export type { ClientHello, ClientHelloErrorCode, ParseResult, SniAnomaly, ServerNameEntry } from './client-hello.js';
export { ja3, ja4 } from './fingerprint.js';
export { QuicInitialReader, QuicInitialError, deriveClientInitialKeys, QUIC_V1, QUIC_V2 } from './quic-initial.js';
export type { QuicInitialErrorCode, QuicInitialSummary, QuicReadResult, QuicInitialReaderOptions } from './quic-initial.js';
export { serveQuicFlow } from './quic-flow.js';
export type { AcceptedDatagramFlow, OnwardDatagramSocket, QuicFlow, QuicOnwardSocket, QuicFlowOptions, QuicFlowOutcome, QuicFlowHandle } from './quic-flow.js';
export { CertificateAuthority, CaError } from './ca.js';
export type { CertificateAuthorityOptions } from './ca.js';
export { parsePolicy, loadPolicy, compilePolicy, PolicyError } from './policy.js';
export type { PolicyFile, Action, HandshakeFacts, PolicyDecision } from './policy.js';
export { TlsProxyMetrics, serveMetrics } from './metrics.js';
export { H2_LIMITS } from './h2-limits.js';
export type { Inspector, Verdict, Decision, RequestInfo, ResponseInfo, ConnectionInfo } from '@coproxy/core/vendor';
