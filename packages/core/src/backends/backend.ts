import type net from 'node:net';
import type { CoproxyError } from '../model/errors.js';
import type { Endpoint, FailMode } from '../model/flow.js';
import type { CompiledMatch, Destination } from '../model/match-rule.js';
import type { RedirectRecords } from '../model/redirect-records.js';
import type { DatagramFlowEndpoint } from '../net/datagram-flows.js';
import type { OnwardDatagramSocket } from '../net/onward-datagram.js';

export type { Endpoint } from '../model/flow.js';

/**
 * The seam between a redirector and the layer that redirects connections to it (the
 * embedded registry, an nft table, a WFP callout). A backend installs the rule, accepts
 * redirected connections, recovers what the redirect layer knows about each, and opens
 * onward connections that carry records.
 */
export interface Backend {
  readonly name: string;
  install(spec: InstallSpec, sink: FlowSink): Promise<Installation>;
}

export interface InstallSpec {
  readonly id: string;
  readonly priority: number;
  readonly match: CompiledMatch;
  readonly failMode: FailMode;
  readonly context: Buffer | undefined;
  readonly listen: { readonly host: string; readonly port: number };
  readonly registry: string | undefined;
  readonly headerTimeoutMs: number;
  readonly maxHeaderBytes: number;
  /** nftables backend: the socket-mark bits it may allocate from. */
  readonly markMask: number;
  /** UDP flows (when the match names `udpPorts`): idle timeout, and how many may be open at once. */
  readonly udp?: DatagramLimits | undefined;
}

export interface DatagramLimits {
  readonly idleTimeoutMs: number;
  readonly maxFlows: number;
  /** Datagrams held for a flow before the vendor subscribes to it. */
  readonly maxQueued: number;
}

/** One redirected UDP flow (a client's 5-tuple), as the backend recovered it. */
export interface AcceptedDatagramFlowInit {
  readonly endpoint: DatagramFlowEndpoint;
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  /** Including this redirect. */
  readonly records: RedirectRecords;
  readonly context: { readonly owner: string; readonly bytes: Buffer } | undefined;
  /** Ends the flow so that the client gives up at once where the backend can (see the backend). */
  reject(): void;
  connectOnward(onward: OnwardRecords): Promise<OnwardDatagramSocket>;
}

/** One redirected connection, as the backend recovered it. */
export interface AcceptedFlow {
  readonly socket: net.Socket;
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  /** Including this redirect. */
  readonly records: RedirectRecords;
  readonly context: { readonly owner: string; readonly bytes: Buffer } | undefined;
  /** Bytes at the start of the stream that were redirect-layer framing, not payload. */
  readonly framingBytes: number;
  connectOnward(onward: OnwardRecords, options: { readonly timeoutMs: number }): Promise<net.Socket>;
}

/**
 * What the onward connection carries, decided by the vendor (`propagateRecords`) and said
 * outright, so a backend never has to infer it: `propagate` carries the flow's records as
 * accepted (`records` is the flow's own); `own-only` carries only this redirector's
 * redirect, as a vendor that merely excludes itself would (the loop demonstration).
 * A backend whose records are an opaque OS blob (WFP) can only pass the blob on or not.
 */
export type OnwardRecords =
  | { readonly kind: 'propagate'; readonly records: RedirectRecords }
  | { readonly kind: 'own-only'; readonly records: RedirectRecords };

export interface FlowSink {
  accepted(flow: AcceptedFlow): void;
  rejected(error: CoproxyError, remote: Partial<Endpoint>): void;
  /** A new UDP flow (backends that redirect UDP). */
  acceptedDatagram?(flow: AcceptedDatagramFlowInit): void;
  /** The installation broke for good (the listener failed): ends `accepted$` with the error. */
  failed(error: Error): void;
}

export interface Installation {
  readonly listening: Endpoint;
  /** Removes the rule and stops listening, synchronously, so traffic goes direct at once. */
  uninstall(): void;
}

/** A peer's address for a `rejected` event: what the socket still knows of it (getpeername). */
export function remoteEndpoint(socket: net.Socket): Partial<Endpoint> {
  return {
    ...(socket.remoteAddress !== undefined && { address: socket.remoteAddress }),
    ...(socket.remotePort !== undefined && { port: socket.remotePort }),
  };
}

/** The options a backend may give a meaning to beyond the generic ones (see `RedirectorOptions`). */
export interface BackendOptions {
  readonly markMask?: number | undefined;
}

/**
 * A backend as the registry knows it (backend-registry.ts): its name, the checks of the
 * options only it constrains, and how to get it. A new backend exports one from its folder
 * and adds one line to the registry; nothing above this layer names it.
 */
export interface BackendDefinition<TName extends string = string> {
  readonly name: TName;
  /**
   * Checks the generically validated spec against what this backend can do and completes
   * it with the options only it reads; throws `InvalidOptionsError` (e.g. nftables: a
   * priority below its minimum, a non-loopback listener, a bad `COPROXY_MARK_MASK`).
   */
  specify(spec: InstallSpec, options: BackendOptions): InstallSpec;
  /** The backend; throws `BackendUnavailableError` where it cannot run (WFP off Windows). */
  open(): Backend;
}

/** Keeps a definition's name a literal type, from which the registry derives `BackendName`. */
export function defineBackend<const TName extends string>(definition: BackendDefinition<TName>): BackendDefinition<TName> {
  return definition;
}
