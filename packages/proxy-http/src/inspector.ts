/**
 * The inspector contract, now core's vendor kit's (`@coproxy/core/vendor`): one contract
 * for coproxy-http and coproxy-tls. Re-exported here so this package's modules and public
 * exports keep their names.
 */
export { decide } from '@coproxy/core/vendor';
export type { Verdict, ConnectionInfo, RequestInfo, ResponseInfo, Inspector, Decision } from '@coproxy/core/vendor';
