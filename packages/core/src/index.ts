/**
 * @coproxy/core: redirect records for cooperating inspection proxies.
 *
 * A vendor creates a redirector, subscribes to its `accepted$` stream, inspects each
 * connection and opens the onward leg with `connectOnward()`, which carries the flow's
 * redirect records so no other cooperating redirector inspects it twice.
 */
export { createRedirector } from './redirector/redirector.js';
export type { Redirector, UdpMatchRule } from './redirector/redirector.js';
export type { AcceptedDatagramFlow, OnwardDatagramSocket } from './redirector/datagram-flow.js';
export type { AcceptedConnection, ConnectOnwardOptions } from './redirector/accepted-connection.js';
export type {
  RedirectorOptions,
  BackendName,
  FailMode,
} from './redirector/redirector-options.js';
export { MAX_CONTEXT_BYTES } from './redirector/redirector-options.js';
export { BACKEND_NAMES, DEFAULT_BACKEND } from './backends/backend-registry.js';
export type { MatchRule, PortSpec, Destination, Transport } from './model/match-rule.js';
export { compileMatch } from './model/match-rule.js';
export type {
  RedirectorEvent,
  InstalledEvent,
  UninstalledEvent,
  AcceptedEvent,
  OnwardConnectedEvent,
  OnwardFailedEvent,
  ClosedEvent,
  RejectedEvent,
} from './redirector/redirector-events.js';
export type { Endpoint } from './model/flow.js';

export { RedirectState, shouldRedirect } from './model/redirect-state.js';
export { RedirectRecords, MAX_REDIRECTS } from './model/redirect-records.js';
export { encodeRecords, decodeRecords, MAX_RECORDS_BYTES, RECORDS_VERSION } from './model/records-codec.js';
export { isRedirectorId, REDIRECTOR_ID_PATTERN } from './model/redirector-id.js';

export { connect } from './backends/embedded/connect.js';
export type { ConnectOptions } from './backends/embedded/connect.js';
export { connectDatagram } from './backends/embedded/datagram-connect.js';
export type { ConnectDatagramOptions } from './backends/embedded/datagram-connect.js';
export { createAgent, createHttpsAgent } from './backends/embedded/agent.js';
export { relay } from './net/relay.js';
export { kernelSpliceStatus, socketBytes, spliceBurst } from './net/kernel-splice.js';
export type { SpliceBurst } from './net/kernel-splice.js';
export type { RelayResult } from './net/relay.js';
export type { CoproxyAgentOptions, CoproxyHttpsAgentOptions } from './backends/embedded/agent.js';

export { defaultRegistryDir } from './backends/embedded/registry.js';
export type { RegistryEntry } from './backends/embedded/registry.js';
export { encodeProxyV2, decodeProxyV2, PROXY_V2_SIGNATURE } from './backends/embedded/proxy-v2.js';
export type { ProxyV2Header, ProxyV2Tlv, ProxyV2Endpoint } from './backends/embedded/proxy-v2.js';
export {
  encodeFlowHeader,
  decodeFlowHeader,
  verifyFlowHeaderAuth,
  TLV_RECORDS,
  TLV_CONTEXT,
  TLV_PID,
  TLV_AUTH,
  AUTH_TAG_BYTES,
} from './backends/embedded/flow-header.js';
export type { FlowHeader, FlowContext } from './backends/embedded/flow-header.js';

export {
  CoproxyError,
  InvalidOptionsError,
  RecordsMalformedError,
  RecordsFullError,
  RecordsMismatchError,
  ContextNotFoundError,
  ContextAccessDeniedError,
  ProxyHeaderMalformedError,
  ProxyHeaderTooLargeError,
  ProxyHeaderTimeoutError,
  ProxyHeaderIncompleteError,
  PeerNotAuthorisedError,
  DestinationOutsideRuleError,
  RedirectorIdInUseError,
  RedirectorUnavailableError,
  RedirectorClosedError,
  RegistryError,
  ConnectTimeoutError,
  BackendUnavailableError,
  PermissionDeniedError,
  MarkMaskExhaustedError,
  SysctlRequiredError,
  SyscallError,
  NftCommandError,
  WfpIoctlError,
  DatagramFlowLimitError,
} from './model/errors.js';
export type { CoproxyErrorCode, PeerNotAuthorisedReason } from './model/errors.js';

export { VendorError, defineErrorCodes, errorCodeOf, ERROR_PREFIX_PATTERN } from './vendor/vendor-error.js';
