/** The rule file is unreadable, not JSON, or does not follow the schema; `problems` lists each with its path. */
export class RulesError extends Error {
  override readonly name = 'RulesError';
  readonly code = 'COPROXY_HTTP_RULES_INVALID';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(`invalid rules in ${source}:\n  ${problems.join('\n  ')}`);
  }
}

/** An option of `createHttpProxy` is out of range. */
export class HttpProxyOptionsError extends Error {
  override readonly name = 'HttpProxyOptionsError';
  readonly code = 'COPROXY_HTTP_INVALID_OPTIONS';
  constructor(
    readonly option: string,
    message: string,
  ) {
    super(`${option}: ${message}`);
  }
}

/**
 * An annotation may add end-to-end headers only: one that set a framing, routing or
 * hop-by-hop field would have the origin frame or route the request other than the
 * proxy parsed and its rules saw.
 */
export class AnnotationRefusedError extends Error {
  override readonly name = 'AnnotationRefusedError';
  readonly code = 'COPROXY_HTTP_ANNOTATION_REFUSED';
  constructor(readonly header: string) {
    super(`an annotation may not set ${header}: it frames, routes or belongs to one hop`);
  }
}

/**
 * Why an exchange or a connection failed, as events and metrics name it. Node's parser
 * codes (`HPE_*`) and system errors (`ECONNREFUSED`, `ECONNRESET`) are kept as they are;
 * these are the proxy's own.
 */
export const ProxyErrorCode = {
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
  Internal: 'PROXY_INTERNAL',
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
} as const;
