import type net from 'node:net';
import type { CoproxyError } from '../errors.js';
import type { RedirectRecords } from '../records/redirect-records.js';
import type { CompiledMatch, Destination } from '../redirector/match-rule.js';
import type { BackendName, FailMode } from '../redirector/redirector-options.js';

/**
 * The seam between a redirector and the layer that redirects connections to it (the
 * embedded registry, an nft table, a WFP callout). A backend installs the rule, accepts
 * redirected connections, recovers what the redirect layer knows about each, and opens
 * onward connections that carry records.
 */
export interface Backend {
  readonly name: BackendName;
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
}

export interface Endpoint {
  readonly address: string;
  readonly port: number;
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
  connectOnward(records: RedirectRecords, options: { readonly timeoutMs: number }): Promise<net.Socket>;
}

export interface FlowSink {
  accepted(flow: AcceptedFlow): void;
  rejected(error: CoproxyError, remote: Partial<Endpoint>): void;
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
