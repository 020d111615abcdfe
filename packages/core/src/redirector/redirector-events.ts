import type { BackendName } from './redirector-options.js';
import type { CoproxyError } from '../model/errors.js';
import type { Endpoint } from '../backends/backend.js';
import type { Destination } from '../model/match-rule.js';
import type { RedirectState } from '../model/redirect-state.js';

interface EventBase {
  readonly redirectorId: string;
  /** `Date.now()` when the event was emitted. */
  readonly at: number;
}

/** The redirect rule is in place and the listener accepts connections. */
export interface InstalledEvent extends EventBase {
  readonly type: 'installed';
  readonly backend: BackendName;
  readonly listening: Endpoint;
}

/** The last subscriber left or the redirector closed: rule removed, listener closed. */
export interface UninstalledEvent extends EventBase {
  readonly type: 'uninstalled';
}

export interface AcceptedEvent extends EventBase {
  readonly type: 'accepted';
  readonly connectionId: string;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  readonly originalDestination: Destination;
  readonly state: RedirectState;
  readonly redirectedBy: readonly string[];
  /** `'udp'` for a datagram flow; absent for a TCP connection. */
  readonly transport?: 'udp';
}

export interface OnwardConnectedEvent extends EventBase {
  readonly type: 'onward-connected';
  readonly connectionId: string;
  readonly destination: Destination;
  readonly propagateRecords: boolean;
  /** The records the onward connection carries. */
  readonly redirectedBy: readonly string[];
}

export interface OnwardFailedEvent extends EventBase {
  readonly type: 'onward-failed';
  readonly connectionId: string;
  readonly destination: Destination;
  readonly error: Error;
}

/** An accepted connection ended; payload byte counts exclude redirect-layer framing. */
export interface ClosedEvent extends EventBase {
  readonly type: 'closed';
  readonly connectionId: string;
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  /** The socket error that ended it, if any. */
  readonly error?: Error;
  /** The first error of its onward socket, if any. */
  readonly onwardError?: Error;
  /** Datagram flows only (`transport: 'udp'`): payload bytes above are the datagrams' payloads. */
  readonly transport?: 'udp';
  readonly datagramsFromClient?: number;
  readonly datagramsToClient?: number;
  /** Datagram flows: why it ended (idle timeout, closed or rejected by the vendor, listener closed, superseded by a new flow of the same client port, evicted from a full table for another user's flow). */
  readonly endedBy?: 'idle' | 'closed' | 'rejected' | 'listener-closed' | 'failed' | 'superseded' | 'evicted';
}

/**
 * A connection reached the listener but was refused and closed, nothing dialled: a bad
 * header, wrong records, a peer that is not the registry's owner
 * (`COPROXY_PEER_NOT_AUTHORISED`), a destination outside the match rule
 * (`COPROXY_DESTINATION_OUTSIDE_RULE`)…
 */
export interface RejectedEvent extends EventBase {
  readonly type: 'rejected';
  readonly error: CoproxyError;
  readonly remote: Partial<Endpoint>;
}

export type RedirectorEvent =
  | InstalledEvent
  | UninstalledEvent
  | AcceptedEvent
  | OnwardConnectedEvent
  | OnwardFailedEvent
  | ClosedEvent
  | RejectedEvent;

type DistributiveOmit<TValue, TKey extends PropertyKey> = TValue extends unknown ? Omit<TValue, TKey> : never;

/** An event as its source builds it; the redirector stamps `redirectorId` and `at`. */
export type RedirectorEventInit = DistributiveOmit<RedirectorEvent, 'redirectorId' | 'at'>;
