import type { FlowKind } from './flows.js';

/** What the origin process reports per flow (by port): what it received and sent. */
export interface OriginFlowReport {
  readonly port: number;
  readonly connections: number;
  /** SHA-256 of everything received on the flow's connections, in order. */
  readonly received: string;
  readonly receivedBytes: number;
  readonly sent: string;
  /** nftables runs: the socket mark of the last connection (the union of the vendors' bits). */
  readonly mark?: number;
}

/** What the client process reports per flow. */
export interface ClientFlowReport {
  readonly index: number;
  readonly kind: FlowKind;
  readonly port: number;
  readonly ok: boolean;
  readonly error?: string;
  readonly sent: string;
  readonly sentBytes: number;
  readonly received: string;
  readonly receivedBytes: number;
  readonly viaCurl: boolean;
}

/** A flow's planned port could not be bound (EADDRINUSE, EACCES): the origin listened on `to` instead. */
export interface PortReplacement {
  readonly index: number;
  readonly from: number;
  readonly to: number;
  readonly code: string;
}

export type OriginMessage =
  /** Listening; `ports[i]` is flow i's port (its planned one unless replaced). */
  | { readonly ready: true; readonly ports: number[]; readonly replaced: PortReplacement[] }
  | { readonly flows: OriginFlowReport[] };
export type ClientMessage = { readonly progress: number } | { readonly done: ClientFlowReport[] };
