import type { IncomingHttpHeaders } from 'node:http';
import type { RedirectorEvent } from '@coproxy/core';
import type { ConnectionInfo, Decision } from './inspector.js';

/**
 * What the proxy reports: the exchange log (`exchanges$`, one entry per finished exchange)
 * and the events (`events$`). Types only, in a module of their own, so the connection code
 * that produces them need not import the proxy that owns it.
 */

/** What to do with a connection that is neither HTTP nor TLS (see `HttpProxyOptions.unrecognised`). */
export type UnrecognisedPolicy = 'block' | 'relay';

export interface HttpExchange {
  readonly kind: 'http' | 'upgrade' | 'opaque';
  readonly connection: ConnectionInfo;
  /** How the request came: HTTP/1.x (`h1`) or a stream of an HTTP/2 prior-knowledge connection (`h2c`). Absent on opaque relays. */
  readonly protocol?: 'h1' | 'h2c';
  /** The HTTP/2 stream id of an `h2c` request. */
  readonly stream?: number;
  /** 1 for the first exchange on a connection, then 2, 3… (keep-alive). */
  readonly sequence: number;
  readonly request?: {
    readonly method: string;
    readonly url: string;
    readonly host: string | undefined;
    readonly headers: IncomingHttpHeaders;
    /** Body bytes received from the client. */
    readonly bodyBytes: number;
  };
  readonly response?: {
    readonly status: number;
    readonly headers?: IncomingHttpHeaders;
    /** Body bytes sent to the client. */
    readonly bodyBytes: number;
  };
  readonly decision?: Decision;
  /** Opaque and upgraded connections: bytes relayed each way. */
  readonly tunnel?: { readonly bytesFromClient: number; readonly bytesToClient: number };
  /**
   * `udp`: a UDP flow relayed under the `relay` policy (`kind: 'opaque'`); `tunnel` then
   * counts datagram payload bytes and `datagrams` the datagrams each way. Absent for TCP.
   */
  readonly transport?: 'udp';
  readonly datagrams?: { readonly fromClient: number; readonly toClient: number };
  readonly error?: { readonly code: string; readonly message: string };
  readonly startedAt: number;
  readonly durationMs: number;
}

export type HttpProxyEvent =
  | RedirectorEvent
  /**
   * How a connection was sorted: `http` is parsed and inspected; `opaque` is relayed byte
   * for byte (`protocol` says why: a TLS record, or unrecognised bytes under the `relay`
   * policy); `blocked` was closed unread (unrecognised, under `block`).
   */
  | {
      readonly type: 'connection-kind';
      readonly connectionId: string;
      readonly kind: 'http' | 'opaque' | 'blocked';
      /** `h2c`: HTTP/2 with prior knowledge (its preface), each stream inspected as a request. */
      readonly protocol: 'http' | 'h2c' | 'tls' | 'unrecognised';
    }
  /**
   * A connection neither HTTP nor TLS (`reason: 'bytes'`, the first up to 16 in hex in
   * `firstBytes`), a client silent for the sniff timeout (`'silent'`), or a UDP flow
   * (`'datagram'`, `transport: 'udp'`: this vendor inspects no datagram protocol;
   * `firstBytes` from its first datagram), and what the policy did with it.
   */
  | {
      readonly type: 'unrecognised';
      readonly connectionId: string;
      readonly action: UnrecognisedPolicy;
      readonly reason: 'bytes' | 'silent' | 'datagram';
      readonly firstBytes: string;
      readonly transport?: 'udp';
    }
  | { readonly type: 'client-error'; readonly connectionId: string; readonly code: string; readonly status?: number }
  | { readonly type: 'exchange-failed'; readonly connectionId: string; readonly code: string; readonly message: string; readonly status?: number };

/** The events this proxy emits itself; the rest of `events$` is the redirector's. */
export type HttpProxyOwnEvent = Exclude<HttpProxyEvent, RedirectorEvent>;
