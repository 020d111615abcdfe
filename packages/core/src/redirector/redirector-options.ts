import type { BackendName } from '../backends/backend-registry.js';
import type { FailMode } from '../model/flow.js';
import type { MatchRule } from '../model/match-rule.js';

export type { BackendName } from '../backends/backend-registry.js';
export type { FailMode } from '../model/flow.js';
export { MAX_CONTEXT_BYTES } from '../model/flow.js';

/** Serialisable description of a redirector; `createRedirector` validates it. */
export interface RedirectorOptions {
  /** Vendor identity, `[a-z0-9-]{1,32}`; two live redirectors may not share one. */
  readonly id: string;
  /**
   * Lower is consulted first, as in nftables. An integer in -2^31..2^31-1; on the
   * nftables backend -199..2^31-1 (nat chains must run after conntrack, at -200).
   */
  readonly priority: number;
  /** Which connections to take; every TCP connection when absent. */
  readonly match?: MatchRule;
  /** Default `'embedded'`. */
  readonly backend?: BackendName;
  /** Default `'open'`. */
  readonly failMode?: FailMode;
  /**
   * Bytes the redirect layer attaches to each flow it redirects here (at most
   * `MAX_CONTEXT_BYTES`); only this redirector can read them, with `context()`.
   */
  readonly context?: Uint8Array;
  /**
   * The local listener; default `127.0.0.1`, an ephemeral port. The nftables backend
   * listens on the loopback addresses only (127.0.0.1 and ::1, one port), where nat
   * `redirect` delivers, and accepts no other host.
   */
  readonly listen?: { readonly host?: string; readonly port?: number };
  /** Embedded backend: the registry directory; default `COPROXY_REGISTRY` or a per-user temp dir. */
  readonly registry?: string;
  /** Embedded backend: how long a peer may take to send its PROXY header. Default 5000 ms. */
  readonly headerTimeoutMs?: number;
  /** Embedded backend: the largest PROXY header accepted. Default 4096 bytes. */
  readonly maxHeaderBytes?: number;
  /**
   * nftables backend: the socket-mark bits redirectors may take one bit each from. Default
   * `COPROXY_MARK_MASK`, else 0xff000000 (chosen to stay clear of kube-proxy, Istio,
   * Cilium, WireGuard and Tailscale marks; see the README). Every cooperating vendor on a
   * host must use the same mask.
   */
  readonly markMask?: number;
  /** UDP (`match.udpPorts`): a flow ends after this long without a datagram either way. Default 30 000 ms. */
  readonly udpIdleTimeoutMs?: number;
  /**
   * UDP: how many flows may be open at once; a new client's datagram beyond that is
   * dropped with a `rejected` event (`COPROXY_UDP_FLOW_LIMIT`). Default 4096.
   */
  readonly maxUdpFlows?: number;
}
