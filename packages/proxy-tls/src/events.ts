import type { Destination, RedirectorEvent } from '@coproxy/core';
import type { Decision } from '@coproxy/core/vendor';
import type { SniAnomaly } from './client-hello.js';
import type { Action } from './policy.js';

/**
 * What the proxy tells its users, as types only: every other module of the package may
 * import this one, and this one imports no behaviour, so no module needs proxy.ts back.
 */

/** The `unrecognised` policy: what happens to bytes that are neither TLS nor a protocol this proxy knows. */
export type UnrecognisedAction = 'block' | 'relay';

/** The `unbumpable` policy: what a bump decision becomes when bump cannot be done. */
export type UnbumpableAction = 'block' | 'splice';

/**
 * Why a connection was unrecognised: `silent` (no byte within the sniff timeout), `unknown`
 * (bytes of no protocol it recognises), `malformed-tls` (the first byte says TLS, the rest
 * is no ClientHello: `code` is the parser's), `incomplete` (the client ended, or the
 * deadline passed, before its first bytes could be told apart), `malformed-quic` (a UDP
 * flow's first datagram is a QUIC long header, the rest no readable Initial: `code` is the
 * QUIC reader's or the ClientHello parser's).
 */
export type UnrecognisedReason = 'silent' | 'unknown' | 'malformed-tls' | 'incomplete' | 'malformed-quic';

/** What was relayed without inspection: a recognised protocol, or unrecognised bytes under `relay`. */
export type RelayedProtocol = 'http1' | 'h2' | 'unrecognised';

/** One inspected ClientHello and what the policy did with it. */
export interface Handshake {
  readonly connectionId: string;
  readonly destination: Destination;
  readonly redirectedBy: readonly string[];
  /** The server name, lower-cased and without a trailing dot; undefined when none is usable. */
  readonly sni: string | undefined;
  /** Present when server_name was there but unusual: the fact the policy saw. */
  readonly sniAnomaly?: SniAnomaly;
  readonly alpn: readonly string[];
  readonly supportedVersions: readonly number[];
  readonly cipherSuites: readonly number[];
  readonly ja3: string;
  readonly ja3Text: string;
  readonly ja4: string;
  /** An outer encrypted_client_hello was present: `sni` is then the public (outer) name. */
  readonly ech: boolean;
  /** How many TLS records the hello spanned. */
  readonly tlsRecordCount: number;
  readonly action: Action;
  /** The policy rule that decided; undefined for the default. */
  readonly rule: string | undefined;
  /** Set when the action taken differs from the policy's (e.g. bump impossible: spliced). */
  readonly note?: string;
}

/** What the policy does with a QUIC flow: relay its datagrams both ways, or block it (the client falls back to TCP). */
export type QuicAction = 'relay' | 'block';

/** One QUIC flow's Initial, read (the ClientHello inside it), and what the policy did with it. */
export interface QuicHandshake {
  readonly transport: 'quic';
  readonly flowId: string;
  readonly destination: { readonly address: string; readonly port: number };
  /** `pid` where the backend knows it (embedded); nftables does not look it up for UDP. */
  readonly source: { readonly address: string; readonly port: number; readonly pid?: number | undefined };
  readonly quicVersion: 'v1' | 'v2';
  /** The server name, lower-cased and without a trailing dot; undefined when none is usable. */
  readonly sni: string | undefined;
  readonly sniAnomaly?: SniAnomaly;
  readonly alpn: readonly string[];
  readonly ja3: string;
  /** JA4 with its `q` prefix. */
  readonly ja4: string;
  readonly ech: boolean;
  /** Initial packets and datagrams the hello took. */
  readonly initialPackets: number;
  readonly datagrams: number;
  readonly action: QuicAction;
  /** The policy rule that decided; undefined for the default. */
  readonly rule: string | undefined;
  /** Set when the action differs from the policy's words (a bump policy blocks QUIC). */
  readonly note?: string;
}

/** What bump speaks on one leg, as ALPN names it. */
export type BumpProtocol = 'h2' | 'http/1.1';

/** A decrypted exchange in bump mode: one HTTP/1.1 request, or one HTTP/2 stream. */
export interface TlsExchange {
  readonly connectionId: string;
  readonly sni: string | undefined;
  /** The exchange's number on its connection, from 1, in the order the requests arrived. */
  readonly sequence: number;
  /** What each leg spoke: bump converts when the client's and the origin's ALPN differ. */
  readonly protocols: { readonly client: BumpProtocol; readonly origin: BumpProtocol };
  /** The inspectors' decision (a blocked request never reaches the origin); absent when an inspector failed. */
  readonly decision?: Decision;
  readonly request: { readonly method: string; readonly url: string; readonly host: string | undefined; readonly bodyBytes: number };
  readonly response?: { readonly status: number; readonly bodyBytes: number };
  readonly error?: { readonly code: string; readonly message: string };
}

/** The failures that end a connection, each an event of its own type. */
export type FailureEventType = 'hello-rejected' | 'origin-rejected' | 'connection-failed';

/** The events this proxy adds to its redirector's: what reporter.ts emits. */
export type TlsOwnEvent =
  /** Relayed without inspection: another protocol recognised, or unrecognised bytes under `relay`. */
  | { readonly type: 'opaque'; readonly connectionId: string; readonly protocol: RelayedProtocol }
  /** First bytes neither TLS nor a recognised protocol, and what the `unrecognised` policy did. */
  | {
      readonly type: 'unrecognised';
      readonly connectionId: string;
      readonly action: UnrecognisedAction;
      readonly reason: UnrecognisedReason;
      /** For `malformed-tls`: the ClientHello parser's code. */
      readonly code?: string;
    }
  /** A QUIC flow's ClientHello was read and decided (`quic-flow.ts`). */
  | { readonly type: 'quic-handshake'; readonly handshake: QuicHandshake }
  | { readonly type: 'hello-rejected'; readonly connectionId: string; readonly code: string; readonly message: string }
  | { readonly type: 'origin-rejected'; readonly connectionId: string; readonly code: string; readonly message: string }
  | { readonly type: 'connection-failed'; readonly connectionId: string; readonly code: string; readonly message: string };

/** Everything `events$` carries: the redirector's events, then the proxy's own. */
export type TlsProxyEvent = RedirectorEvent | TlsOwnEvent;
