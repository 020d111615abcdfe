/**
 * Every error coproxy raises is a `CoproxyError` with a stable literal `code`, so callers
 * branch on `err.code` rather than on message text. Subclasses carry the facts a caller
 * needs as readonly fields and keep the underlying `cause`.
 *
 * @example
 * ```ts
 * try {
 *   conn.context();
 * } catch (err) {
 *   if (err instanceof CoproxyError && err.code === 'COPROXY_CONTEXT_NOT_FOUND') {
 *     // this redirector attached no context to the flow
 *   } else throw err;
 * }
 * ```
 */
export abstract class CoproxyError extends Error {
  abstract readonly code: CoproxyErrorCode;

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

export type CoproxyErrorCode =
  | 'COPROXY_INVALID_OPTIONS'
  | 'COPROXY_RECORDS_MALFORMED'
  | 'COPROXY_RECORDS_FULL'
  | 'COPROXY_RECORDS_MISMATCH'
  | 'COPROXY_CONTEXT_NOT_FOUND'
  | 'COPROXY_CONTEXT_ACCESS_DENIED'
  | 'COPROXY_PROXY_HEADER_MALFORMED'
  | 'COPROXY_PROXY_HEADER_TOO_LARGE'
  | 'COPROXY_PROXY_HEADER_TIMEOUT'
  | 'COPROXY_PROXY_HEADER_INCOMPLETE'
  | 'COPROXY_PEER_NOT_AUTHORISED'
  | 'COPROXY_DESTINATION_OUTSIDE_RULE'
  | 'COPROXY_REDIRECTOR_ID_IN_USE'
  | 'COPROXY_REDIRECTOR_UNAVAILABLE'
  | 'COPROXY_REDIRECTOR_CLOSED'
  | 'COPROXY_REGISTRY_ERROR'
  | 'COPROXY_CONNECT_TIMEOUT'
  | 'COPROXY_BACKEND_UNAVAILABLE'
  | 'COPROXY_PERMISSION_DENIED'
  | 'COPROXY_MARK_MASK_EXHAUSTED'
  | 'COPROXY_SYSCTL_REQUIRED'
  | 'COPROXY_SYSCALL_FAILED'
  | 'COPROXY_NFT_FAILED'
  | 'COPROXY_WFP_IOCTL_FAILED'
  | 'COPROXY_UDP_FLOW_LIMIT';

/** An option passed to a coproxy function is out of its documented range. */
export class InvalidOptionsError extends CoproxyError {
  override readonly name = 'InvalidOptionsError';
  readonly code = 'COPROXY_INVALID_OPTIONS';
  constructor(
    message: string,
    readonly option: string,
  ) {
    super(`${option}: ${message}`);
  }
}

/** A records blob failed strict decoding: wrong version, bad length, bad id, trailing bytes. */
export class RecordsMalformedError extends CoproxyError {
  override readonly name = 'RecordsMalformedError';
  readonly code = 'COPROXY_RECORDS_MALFORMED';
  constructor(
    message: string,
    /** Byte offset in the blob where decoding failed. */
    readonly offset: number,
  ) {
    super(`malformed redirect records at byte ${offset}: ${message}`);
  }
}

/** Adding one more redirect would exceed the records' bound. */
export class RecordsFullError extends CoproxyError {
  override readonly name = 'RecordsFullError';
  readonly code = 'COPROXY_RECORDS_FULL';
  constructor(readonly limit: number) {
    super(`a flow may cross at most ${limit} redirectors; records are full`);
  }
}

/**
 * A connection reached a redirector whose own redirect is not the last one in the records
 * it carries: it was not redirected here by the redirect layer.
 */
export class RecordsMismatchError extends CoproxyError {
  override readonly name = 'RecordsMismatchError';
  readonly code = 'COPROXY_RECORDS_MISMATCH';
  constructor(
    readonly redirectorId: string,
    readonly redirectedBy: readonly string[],
  ) {
    super(
      `connection reached redirector '${redirectorId}' but its records say it was redirected by [${redirectedBy.join(', ')}]`,
    );
  }
}

/** The redirector attached no context to this flow (WFP: the query finds nothing). */
export class ContextNotFoundError extends CoproxyError {
  override readonly name = 'ContextNotFoundError';
  readonly code = 'COPROXY_CONTEXT_NOT_FOUND';
  constructor(readonly redirectorId: string) {
    super(`no redirect context for redirector '${redirectorId}' on this connection`);
  }
}

/** The context belongs to another redirector; only the one that attached it may read it. */
export class ContextAccessDeniedError extends CoproxyError {
  override readonly name = 'ContextAccessDeniedError';
  readonly code = 'COPROXY_CONTEXT_ACCESS_DENIED';
  constructor(
    readonly redirectorId: string,
    readonly ownerId: string,
  ) {
    super(`redirector '${redirectorId}' may not read the context attached by '${ownerId}'`);
  }
}

/** The PROXY protocol v2 header that starts a redirected connection is not valid. */
export class ProxyHeaderMalformedError extends CoproxyError {
  override readonly name = 'ProxyHeaderMalformedError';
  readonly code = 'COPROXY_PROXY_HEADER_MALFORMED';
  constructor(message: string, options?: ErrorOptions) {
    super(`malformed PROXY v2 header: ${message}`, options);
  }
}

/** The PROXY header announces more bytes than the accepting side allows. */
export class ProxyHeaderTooLargeError extends CoproxyError {
  override readonly name = 'ProxyHeaderTooLargeError';
  readonly code = 'COPROXY_PROXY_HEADER_TOO_LARGE';
  constructor(
    readonly announced: number,
    readonly limit: number,
  ) {
    super(`PROXY v2 header of ${announced} bytes exceeds the limit of ${limit}`);
  }
}

/** The peer did not finish sending the PROXY header in time. */
export class ProxyHeaderTimeoutError extends CoproxyError {
  override readonly name = 'ProxyHeaderTimeoutError';
  readonly code = 'COPROXY_PROXY_HEADER_TIMEOUT';
  constructor(
    readonly timeoutMs: number,
    readonly received: number,
  ) {
    super(`PROXY v2 header not complete after ${timeoutMs} ms (${received} bytes received)`);
  }
}

/** The peer closed or reset the connection before the PROXY header was complete. */
export class ProxyHeaderIncompleteError extends CoproxyError {
  override readonly name = 'ProxyHeaderIncompleteError';
  readonly code = 'COPROXY_PROXY_HEADER_INCOMPLETE';
  constructor(
    readonly received: number,
    options?: ErrorOptions,
  ) {
    super(`connection ended after ${received} bytes, before the PROXY v2 header was complete`, options);
  }
}

/**
 * Why a peer of an embedded listener was refused: its PROXY header carried no
 * authentication TLV, or one that does not verify with the redirector's secret, or the
 * tag verified but the kernel says the connecting socket belongs to another uid (the
 * secret has leaked).
 */
export type PeerNotAuthorisedReason = 'no-credential' | 'bad-credential' | 'peer-uid';

/**
 * A connection reached an embedded redirector's listener without proof that it comes
 * from a process of the registry's owner (the HMAC only a reader of the 0600 registry
 * entry can make): another local user, or a process that did not read the registry. It
 * is closed before anything is dialled, so the listener is no relay for others.
 */
export class PeerNotAuthorisedError extends CoproxyError {
  override readonly name = 'PeerNotAuthorisedError';
  readonly code = 'COPROXY_PEER_NOT_AUTHORISED';
  constructor(
    readonly redirectorId: string,
    readonly reason: PeerNotAuthorisedReason,
    /** The uid owning the connecting socket, where the platform says (Linux, a local peer). */
    readonly peerUid?: number,
  ) {
    const who = peerUid === undefined ? '' : ` (peer uid ${peerUid})`;
    super(`connection to redirector '${redirectorId}'${who} ${peerNotAuthorisedDetail(reason)}: not from a process of the registry's owner`);
  }
}

function peerNotAuthorisedDetail(reason: PeerNotAuthorisedReason): string {
  switch (reason) {
    case 'no-credential':
      return 'carries no authentication TLV';
    case 'bad-credential':
      return 'carries an authentication TLV that does not verify';
    case 'peer-uid':
      return 'carries a valid authentication TLV from a socket of another user';
    default:
      return unreachable(reason);
  }
}

/**
 * A flow's original destination is not one the redirector's match rule takes, whatever
 * the redirect layer (a PROXY header, SO_ORIGINAL_DST, WFP) said: the redirector refuses
 * it rather than dial a destination it was never configured for.
 */
export class DestinationOutsideRuleError extends CoproxyError {
  override readonly name = 'DestinationOutsideRuleError';
  readonly code = 'COPROXY_DESTINATION_OUTSIDE_RULE';
  constructor(
    readonly redirectorId: string,
    readonly destination: { readonly address: string; readonly port: number; readonly family: 4 | 6 },
  ) {
    const shown = destination.family === 6 ? `[${destination.address}]` : destination.address;
    super(`redirector '${redirectorId}' does not take ${shown}:${destination.port}: outside its match rule`);
  }
}

/** Another live redirector already uses this id. */
export class RedirectorIdInUseError extends CoproxyError {
  override readonly name = 'RedirectorIdInUseError';
  readonly code = 'COPROXY_REDIRECTOR_ID_IN_USE';
  constructor(
    readonly redirectorId: string,
    readonly ownerPid: number,
  ) {
    super(`redirector id '${redirectorId}' is in use by process ${ownerPid}`);
  }
}

/**
 * A fail-closed redirector that matches the flow is down (its process is gone or its
 * listener refuses), so the flow is refused rather than let through uninspected.
 */
export class RedirectorUnavailableError extends CoproxyError {
  override readonly name = 'RedirectorUnavailableError';
  readonly code = 'COPROXY_REDIRECTOR_UNAVAILABLE';
  constructor(
    readonly redirectorId: string,
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`redirector '${redirectorId}' is fail-closed and unavailable (${reason}); connection refused`, options);
  }
}

/** The redirector was closed; it cannot be subscribed to again. */
export class RedirectorClosedError extends CoproxyError {
  override readonly name = 'RedirectorClosedError';
  readonly code = 'COPROXY_REDIRECTOR_CLOSED';
  constructor(readonly redirectorId: string) {
    super(`redirector '${redirectorId}' is closed`);
  }
}

/** The registry directory cannot be read or written. */
export class RegistryError extends CoproxyError {
  override readonly name = 'RegistryError';
  readonly code = 'COPROXY_REGISTRY_ERROR';
  constructor(
    message: string,
    readonly path: string,
    options?: ErrorOptions,
  ) {
    super(`${message} (${path})`, options);
  }
}

/** A connection was not established within the caller's `timeoutMs`. */
export class ConnectTimeoutError extends CoproxyError {
  override readonly name = 'ConnectTimeoutError';
  readonly code = 'COPROXY_CONNECT_TIMEOUT';
  constructor(
    readonly target: string,
    readonly timeoutMs: number,
  ) {
    super(`no connection to ${target} within ${timeoutMs} ms`);
  }
}

/** The requested backend cannot run here (wrong platform, missing privileges, not built yet). */
export class BackendUnavailableError extends CoproxyError {
  override readonly name = 'BackendUnavailableError';
  readonly code = 'COPROXY_BACKEND_UNAVAILABLE';
  constructor(
    readonly backend: string,
    readonly reason: string,
  ) {
    super(`backend '${backend}' is unavailable: ${reason}`);
  }
}

/** The backend needs a privilege this process lacks (nftables: CAP_NET_ADMIN). */
export class PermissionDeniedError extends CoproxyError {
  override readonly name = 'PermissionDeniedError';
  readonly code = 'COPROXY_PERMISSION_DENIED';
  constructor(
    readonly backend: string,
    readonly needed: string,
    options?: ErrorOptions,
  ) {
    super(`backend '${backend}' needs ${needed}`, options);
  }
}

/** Every socket-mark bit of the mask is held by a redirector: no bit is left for this one. */
export class MarkMaskExhaustedError extends CoproxyError {
  override readonly name = 'MarkMaskExhaustedError';
  readonly code = 'COPROXY_MARK_MASK_EXHAUSTED';
  constructor(
    readonly mask: number,
    /** Redirector ids holding the mask's bits. */
    readonly holders: readonly string[],
  ) {
    super(
      `no free bit in mark mask 0x${mask.toString(16).padStart(8, '0')} (held by ${holders.join(', ')}); ` +
        'widen it with the markMask option or COPROXY_MARK_MASK',
    );
  }
}

/** A kernel setting the backend relies on is off and this process may not turn it on. */
export class SysctlRequiredError extends CoproxyError {
  override readonly name = 'SysctlRequiredError';
  readonly code = 'COPROXY_SYSCTL_REQUIRED';
  constructor(
    /** As `sysctl` spells it, e.g. `net.ipv4.tcp_fwmark_accept`. */
    readonly sysctl: string,
    readonly required: string,
    readonly actual: string,
    options?: ErrorOptions,
  ) {
    super(`${sysctl} is ${actual} and must be ${required}: run 'sysctl -w ${sysctl}=${required}' as root`, options);
  }
}

/** A system call made through koffi failed; `errno` is the number, `errnoName` its name (`EPERM`). */
export class SyscallError extends CoproxyError {
  override readonly name = 'SyscallError';
  readonly code = 'COPROXY_SYSCALL_FAILED';
  constructor(
    readonly syscall: string,
    readonly errno: number,
    readonly errnoName: string,
  ) {
    super(`${syscall} failed: ${errnoName} (errno ${errno})`);
  }
}

/** libnftables refused a command; `command` is the nft text, `detail` what nft printed. */
export class NftCommandError extends CoproxyError {
  override readonly name = 'NftCommandError';
  readonly code = 'COPROXY_NFT_FAILED';
  constructor(
    readonly command: string,
    readonly detail: string,
  ) {
    super(`nft refused '${command.length > 120 ? `${command.slice(0, 117)}...` : command}': ${detail}`);
  }
}

/**
 * One of the WFP redirect ioctls (`WSAIoctl` with `SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS`,
 * `…_CONTEXT` or `SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS`) failed. `win32Error` is what
 * `WSAGetLastError()` returned (a Winsock code such as 10013 `WSAEACCES`, or a Win32 one such
 * as 534 `ERROR_ARITHMETIC_OVERFLOW`), `win32ErrorName` its name.
 */
export class WfpIoctlError extends CoproxyError {
  override readonly name = 'WfpIoctlError';
  readonly code = 'COPROXY_WFP_IOCTL_FAILED';
  constructor(
    /** The ioctl by its SDK name, e.g. `SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS`. */
    readonly ioctl: string,
    readonly win32Error: number,
    readonly win32ErrorName: string,
    detail?: string,
  ) {
    super(`${ioctl} failed: ${win32ErrorName} (${win32Error})${detail === undefined ? '' : `: ${detail}`}`);
  }
}

/** Node's system errors carry an errno name in `code`; narrow `unknown` to read it. */
export function errnoCode(error: unknown): string | undefined {
  if (error instanceof Error && 'code' in error && typeof error.code === 'string') return error.code;
  return undefined;
}

/** For `switch` statements over unions: adding a member breaks the build here. */
export function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}

/**
 * A datagram from a new client arrived while the redirector already held its maximum of
 * UDP flows (`maxUdpFlows`): it is dropped, no flow is opened, nothing is dialled.
 */
export class DatagramFlowLimitError extends CoproxyError {
  override readonly name = 'DatagramFlowLimitError';
  readonly code = 'COPROXY_UDP_FLOW_LIMIT';
  constructor(
    readonly redirectorId: string,
    readonly maxFlows: number,
  ) {
    super(`redirector '${redirectorId}' already holds ${maxFlows} UDP flows; a datagram from a new client was dropped`);
  }
}
