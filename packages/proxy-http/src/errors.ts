import { VendorError, defineErrorCodes } from '@coproxy/core';

/**
 * Why an exchange or a connection failed, as events, metrics and answers name it: every
 * code of this package's own carries the `COPROXY_HTTP_` prefix (core's vendor kit), so
 * another vendor's `ORIGIN_TIMEOUT` on the same host is never taken for this one's.
 * Node's parser codes (`HPE_*`) and system errors (`ECONNREFUSED`, `ECONNRESET`) are kept
 * as they are, as are core's (`COPROXY_CONNECT_TIMEOUT`).
 */
export const ProxyErrorCode = defineErrorCodes('COPROXY_HTTP', {
  /** The origin sent no response head within `originTimeoutMs` (504). */
  OriginTimeout: 'ORIGIN_TIMEOUT',
  /** The origin could not be reached (502), or no connection within the connect timeout (504: COPROXY_CONNECT_TIMEOUT). */
  OriginUnreachable: 'ORIGIN_UNREACHABLE',
  /** The origin's connection broke after its response had started: the client's is cut too. */
  OriginReset: 'ORIGIN_RESET',
  /** The client's connection broke mid-exchange: the origin's is cut too. */
  ClientReset: 'CLIENT_RESET',
  /** The origin's response was not valid HTTP (502). */
  OriginMalformed: 'ORIGIN_MALFORMED',
  /** An inspector threw (502). */
  InspectorFailed: 'INSPECTOR_FAILED',
  /** A fault in the proxy's own code while serving an exchange (502, logged at error level): a bug to report. */
  Internal: 'INTERNAL',
  /** More CR and LF bytes before the first request line than the proxy skips (400). */
  LeadingEmptyLines: 'LEADING_EMPTY_LINES',
  /** A Connection header names Content-Length, Transfer-Encoding or Host (400): stripping it would reframe the request. */
  ConnectionNamesFraming: 'CONNECTION_NAMES_FRAMING',
  /** Transfer-Encoding in an HTTP/1.0 request, empty, or with chunked not last or twice (400). */
  TransferEncodingInvalid: 'TRANSFER_ENCODING_INVALID',
  /** A transfer coding before chunked that is not gzip, deflate or compress (501). */
  TransferCodingUnknown: 'TRANSFER_CODING_UNKNOWN',
  /** An Upgrade request with a chunked body (400): its chunk sizes would go unchecked into the tunnel. */
  UpgradeWithChunkedBody: 'UPGRADE_WITH_CHUNKED_BODY',
  /** A Content-Length, or chunk sizes declared so far, over `maxBodySize` (413). */
  BodyTooLarge: 'BODY_TOO_LARGE',
  /** A request line of a version other than HTTP/1.0 and 1.1, or HTTP/2's prior-knowledge preface (505). */
  HttpVersion: 'HTTP_VERSION',
  /** No complete request head within `headersTimeoutMs` from its first byte (408). */
  RequestTimeout: 'REQUEST_TIMEOUT',
  /** A CONNECT request: a transparent proxy sees what clients send their origins; CONNECT is for explicit proxies (501). */
  ConnectMethod: 'CONNECT_METHOD',
  /** A relayed (opaque or upgraded) connection broke with an error that named no code of its own. */
  RelayReset: 'RELAY_RESET',
  /** A relayed UDP flow's client sent more datagrams than are held while the onward socket opens: the rest were dropped (in its exchange). */
  UdpDatagramsDropped: 'UDP_DATAGRAMS_DROPPED',
  /** An HTTP/1.1 request without a Host header (400). */
  HostMissing: 'HOST_MISSING',
  /** More than one Host header line (400): which one would the origin use? */
  HostDuplicate: 'HOST_DUPLICATE',
  /** A Host that is no `host[:port]` (400). */
  HostInvalid: 'HOST_INVALID',
  /** A request target origins could read otherwise than the rules would (400; canonical-request.ts). */
  TargetInvalid: 'TARGET_INVALID',
  /** An HTTP/2 request whose `:authority` and `Host` name different authorities (400): which one would the origin use? */
  AuthorityMismatch: 'AUTHORITY_MISMATCH',
  /** An HTTP/2 client over a per-second bound of stream resets, PINGs or SETTINGS (rapid reset, control-frame floods): GOAWAY, then the close. */
  H2Flood: 'H2_FLOOD',
  /** The rule file is unreadable, not JSON, or does not follow the schema. */
  RulesInvalid: 'RULES_INVALID',
  /** An option of `createHttpProxy` is out of range. */
  InvalidOptions: 'INVALID_OPTIONS',
  /** An annotation tried to set a framing, routing or hop-by-hop header. */
  AnnotationRefused: 'ANNOTATION_REFUSED',
} as const);
export type ProxyErrorCode = (typeof ProxyErrorCode)[keyof typeof ProxyErrorCode];

/** The one error base of this package: every error it throws has a `COPROXY_HTTP_*` code. */
export class HttpProxyError<Code extends ProxyErrorCode = ProxyErrorCode> extends VendorError<Code> {
  override readonly name: string = 'HttpProxyError';
}

/** The rule file is unreadable, not JSON, or does not follow the schema; `problems` lists each with its path. */
export class RulesError extends HttpProxyError<typeof ProxyErrorCode.RulesInvalid> {
  override readonly name = 'RulesError';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(ProxyErrorCode.RulesInvalid, `invalid rules in ${source}:\n  ${problems.join('\n  ')}`);
  }
}

/** An option of `createHttpProxy` is out of range. */
export class HttpProxyOptionsError extends HttpProxyError<typeof ProxyErrorCode.InvalidOptions> {
  override readonly name = 'HttpProxyOptionsError';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(ProxyErrorCode.InvalidOptions, `${option}: ${message}`);
  }
}

/**
 * An annotation may add end-to-end headers only: one that set a framing, routing or
 * hop-by-hop field would have the origin frame or route the request other than the
 * proxy parsed and its rules saw.
 */
export class AnnotationRefusedError extends HttpProxyError<typeof ProxyErrorCode.AnnotationRefused> {
  override readonly name = 'AnnotationRefusedError';
  constructor(readonly header: string) {
    super(ProxyErrorCode.AnnotationRefused, `an annotation may not set ${header}: it frames, routes or belongs to one hop`);
  }
}
