import type net from 'node:net';
import type { AcceptedFlow, Endpoint, OnwardRecords } from '../backends/backend.js';
import { ContextAccessDeniedError, ContextNotFoundError, DestinationOutsideRuleError } from '../model/errors.js';
import { RedirectRecords } from '../model/redirect-records.js';
import { RedirectState } from '../model/redirect-state.js';
import { admits, type CompiledMatch, type Destination } from '../model/match-rule.js';
import type { RedirectorEventInit } from './redirector-events.js';

export interface ConnectOnwardOptions {
  /**
   * Default `true`: the onward connection carries the flow's records, so no redirector
   * inspects it twice. `false` carries only this redirector's own redirect, as a vendor
   * that merely excludes itself would: for demonstrations and tests of the loop.
   */
  readonly propagateRecords?: boolean;
  /** Give up reaching the destination after this long (`COPROXY_CONNECT_TIMEOUT`). Default 30 000 ms. */
  readonly timeoutMs?: number;
}

export const DEFAULT_ONWARD_TIMEOUT_MS = 30_000;

/**
 * A connection redirected to this redirector, with what the redirect layer knows of it.
 *
 * The socket is an ordinary stream that has not started flowing: attach 'data', pipe it
 * or `relay()` it once the onward leg is up. It allows half-open connections (a client's
 * FIN must reach the origin while the reply still flows), so end it yourself, or use
 * `relay()`, which does. coproxy keeps an 'error' listener on it and on the onward socket,
 * so a peer's reset never crashes the process; errors are reported in the `closed` event.
 */
export interface AcceptedConnection {
  /** `'tcp'` (a UDP flow is an `AcceptedDatagramFlow`, `transport: 'udp'`), for telling them apart on one `accepted$`. */
  readonly transport?: 'tcp';
  /** `<redirector id>#<n>`, unique in this process; events about it carry the same id. */
  readonly id: string;
  readonly socket: net.Socket;
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  /** What this redirector saw when the flow was classified: `NotRedirected` or `RedirectedByOther`. */
  readonly state: RedirectState;
  /** Opaque; includes this redirect, so `records.stateFor(self)` is `RedirectedBySelf`. */
  readonly records: RedirectRecords;
  /** This redirector's context; throws `COPROXY_CONTEXT_NOT_FOUND` when it attached none. */
  context(): Buffer;
  /**
   * Opens the connection to the original destination with the records attached. The
   * socket allows half-open connections, like the accepted one. Rejects with
   * `COPROXY_DESTINATION_OUTSIDE_RULE`, dialling nothing, if the destination is not one
   * this redirector's match rule takes.
   */
  connectOnward(options?: ConnectOnwardOptions): Promise<net.Socket>;
}

export class Accepted implements AcceptedConnection {
  readonly transport = 'tcp';
  readonly socket: net.Socket;
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  readonly state: RedirectState;
  readonly records: RedirectRecords;
  /** The first error of an onward socket, for the `closed` event. */
  onwardError: Error | undefined;

  constructor(
    readonly id: string,
    private readonly redirectorId: string,
    private readonly match: CompiledMatch,
    private readonly flow: AcceptedFlow,
    private readonly emit: (event: RedirectorEventInit) => void,
  ) {
    this.socket = flow.socket;
    this.originalDestination = flow.originalDestination;
    this.source = flow.source;
    this.records = flow.records;
    this.state = flow.records.hops > 1 ? RedirectState.RedirectedByOther : RedirectState.NotRedirected;
  }

  context(): Buffer {
    const context = this.flow.context;
    if (context === undefined) throw new ContextNotFoundError(this.redirectorId);
    if (context.owner !== this.redirectorId) throw new ContextAccessDeniedError(this.redirectorId, context.owner);
    return Buffer.from(context.bytes);
  }

  async connectOnward(options: ConnectOnwardOptions = {}): Promise<net.Socket> {
    const propagateRecords = options.propagateRecords ?? true;
    const onward: OnwardRecords = propagateRecords
      ? { kind: 'propagate', records: this.records }
      : { kind: 'own-only', records: RedirectRecords.empty.withRedirect(this.redirectorId) };
    const { records } = onward;
    try {
      // The redirector refuses such flows before they are emitted; this is the last gate
      // before a dial, for a flow that reached here some other way.
      if (!admits(this.match, this.originalDestination)) {
        throw new DestinationOutsideRuleError(this.redirectorId, this.originalDestination);
      }
      const socket = await this.flow.connectOnward(onward, { timeoutMs: options.timeoutMs ?? DEFAULT_ONWARD_TIMEOUT_MS });
      socket.on('error', (error) => (this.onwardError ??= error));
      this.emit({ type: 'onward-connected', connectionId: this.id, destination: this.originalDestination, propagateRecords, redirectedBy: records.redirectedBy });
      return socket;
    } catch (error) {
      this.emit({ type: 'onward-failed', connectionId: this.id, destination: this.originalDestination, error: error as Error });
      throw error;
    }
  }
}
