import type { Observable } from 'rxjs';
import type { AcceptedDatagramFlowInit, Endpoint, OnwardRecords } from '../backends/backend.js';
import { ContextAccessDeniedError, ContextNotFoundError, DestinationOutsideRuleError } from '../model/errors.js';
import { admits, type CompiledMatch, type Destination } from '../model/match-rule.js';
import { RedirectRecords } from '../model/redirect-records.js';
import { RedirectState } from '../model/redirect-state.js';
import type { OnwardDatagramSocket } from '../net/onward-datagram.js';
import type { ConnectOnwardOptions } from './accepted-connection.js';
import type { RedirectorEventInit } from './redirector-events.js';

export type { OnwardDatagramSocket } from '../net/onward-datagram.js';

/**
 * A UDP flow redirected to this redirector: the datagrams of one client address and port
 * to one original destination, until it has been idle for `udpIdleTimeoutMs` or is closed.
 * It arrives on the same `accepted$` stream as TCP connections; tell them apart by
 * `transport`.
 *
 * Datagrams have no backpressure. Those that arrive before `datagrams$` is first
 * subscribed are held (a bounded number, the rest dropped and counted in the `closed`
 * event), so a vendor may dial onward first and subscribe after. The held ones go to that
 * first subscriber only: subscribe once, with both `next` and `complete`.
 *
 * @example
 * ```ts
 * if (flow.transport === 'udp') {
 *   const onward = await flow.connectOnward();
 *   flow.datagrams$.subscribe({ next: (d) => onward.send(d), complete: () => onward.close() });
 *   onward.datagrams$.subscribe((d) => flow.send(d));
 * }
 * ```
 */
export interface AcceptedDatagramFlow {
  readonly transport: 'udp';
  /** `<redirector id>#<n>`, unique in this process; events about it carry the same id. */
  readonly id: string;
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  /** What this redirector saw when the flow was classified: `NotRedirected` or `RedirectedByOther`. */
  readonly state: RedirectState;
  /** Opaque; includes this redirect. */
  readonly records: RedirectRecords;
  /** This redirector's context; throws `COPROXY_CONTEXT_NOT_FOUND` when it attached none. */
  context(): Buffer;
  /** Client → vendor, in arrival order; completes when the flow ends. */
  readonly datagrams$: Observable<Buffer>;
  /** Vendor → client; the client sees it come from the original destination. Ignored once the flow has ended. */
  send(payload: Buffer): void;
  /**
   * A datagram socket connected to the original destination, carrying the records, so
   * that no redirector takes the onward flow twice. Rejects with
   * `COPROXY_DESTINATION_OUTSIDE_RULE`, opening nothing, if the rule does not take the
   * destination. Close it when the flow ends.
   */
  connectOnward(options?: Pick<ConnectOnwardOptions, 'propagateRecords'>): Promise<OnwardDatagramSocket>;
  /**
   * Ends the flow so that the client gives up at once: on nftables the client's next
   * datagram of this flow is answered with ICMP port unreachable (from the original
   * destination, as conntrack translates it), which a connected UDP socket reports as
   * ECONNREFUSED. On embedded the flow just ends (the listener's port stays open for
   * other flows, so there is no ICMP error to give). `reason` goes into the `closed` event.
   */
  reject(reason: string): void;
  /** Ends the flow; its datagrams$ completes. */
  close(): void;
}

export class AcceptedDatagram implements AcceptedDatagramFlow {
  readonly transport = 'udp';
  readonly originalDestination: Destination;
  readonly source: Endpoint & { readonly pid?: number | undefined };
  readonly state: RedirectState;
  readonly records: RedirectRecords;
  readonly datagrams$: Observable<Buffer>;
  /** Onward sockets, closed with the flow; their first error goes into the `closed` event. */
  readonly onward = new Set<OnwardDatagramSocket>();
  rejectReason: string | undefined;
  /** The backend could not make the client give up (e.g. the nft command failed). */
  rejectError: Error | undefined;

  constructor(
    readonly id: string,
    private readonly redirectorId: string,
    private readonly match: CompiledMatch,
    private readonly flow: AcceptedDatagramFlowInit,
    private readonly emit: (event: RedirectorEventInit) => void,
  ) {
    this.originalDestination = flow.originalDestination;
    this.source = flow.source;
    this.records = flow.records;
    this.datagrams$ = flow.endpoint.datagrams$;
    this.state = flow.records.hops > 1 ? RedirectState.RedirectedByOther : RedirectState.NotRedirected;
  }

  context(): Buffer {
    const context = this.flow.context;
    if (context === undefined) throw new ContextNotFoundError(this.redirectorId);
    if (context.owner !== this.redirectorId) throw new ContextAccessDeniedError(this.redirectorId, context.owner);
    return Buffer.from(context.bytes);
  }

  send(payload: Buffer): void {
    this.flow.endpoint.send(payload);
  }

  async connectOnward(options: Pick<ConnectOnwardOptions, 'propagateRecords'> = {}): Promise<OnwardDatagramSocket> {
    const propagateRecords = options.propagateRecords ?? true;
    const onward: OnwardRecords = propagateRecords
      ? { kind: 'propagate', records: this.records }
      : { kind: 'own-only', records: RedirectRecords.empty.withRedirect(this.redirectorId) };
    const base = { connectionId: this.id, destination: this.originalDestination };
    try {
      if (!admits(this.match, this.originalDestination, 'udp')) {
        throw new DestinationOutsideRuleError(this.redirectorId, this.originalDestination);
      }
      const socket = await this.flow.connectOnward(onward);
      if (this.flow.endpoint.ended !== undefined) {
        socket.close(); // the flow ended while the socket was being opened
      } else {
        this.onward.add(socket);
      }
      this.emit({ type: 'onward-connected', ...base, propagateRecords, redirectedBy: onward.records.redirectedBy });
      return socket;
    } catch (error) {
      this.emit({ type: 'onward-failed', ...base, error: error as Error });
      throw error;
    }
  }

  reject(reason: string): void {
    if (this.flow.endpoint.ended !== undefined) return;
    this.rejectReason = reason;
    try {
      this.flow.reject();
    } catch (error) {
      // The flow ends all the same; why the client was not told goes into the `closed` event.
      this.rejectError = error as Error;
    }
    this.flow.endpoint.end('rejected');
  }

  close(): void {
    this.flow.endpoint.end('closed');
  }
}
