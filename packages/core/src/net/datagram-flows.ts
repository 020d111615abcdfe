import type dgram from 'node:dgram';
import { Observable, type Subscriber } from 'rxjs';

/**
 * UDP has no connections: a redirector's listening socket receives every client's
 * datagrams. This splits them into flows, one per client address and port (with the
 * listener's own address and port, the client's 5-tuple), each ending after an idle time,
 * with a bound on how many are open at once.
 *
 * Datagrams have no backpressure: a flow queues what arrives before its first
 * subscriber (the vendor is still dialling onward, say) up to `maxQueued` datagrams and
 * {@link MAX_QUEUED_BYTES_PER_FLOW}, all the flows of one table together up to
 * {@link MAX_QUEUED_BYTES_PER_TABLE}, and drops the rest, counted; after that each is
 * handed on as it arrives. A count alone would let 64 KiB datagrams hold 4 MiB a flow.
 */

/** Bytes one flow may queue before its first subscriber. */
export const MAX_QUEUED_BYTES_PER_FLOW = 256 * 1024;
/** Bytes all the flows of one listening socket may queue together (flows are one datagram each to open). */
export const MAX_QUEUED_BYTES_PER_TABLE = 16 * 1024 * 1024;

/** What the flows of one table have queued, shared by them. */
interface QueueShare {
  bytes: number;
}
export interface DatagramPeer {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

export interface DatagramCounts {
  datagramsIn: number;
  bytesIn: number;
  datagramsOut: number;
  bytesOut: number;
  /** Datagrams dropped because nobody was subscribed yet and the queue was full. */
  dropped: number;
}

/** Why a flow ended. */
/**
 * `superseded`: the client's address and port began another flow (a new socket got the
 * port, or conntrack forgot the flow and the port now sends elsewhere). `evicted`: the
 * table was full and another owner's new flow took this one's place (see `owner`).
 */
export type DatagramFlowEnd = 'idle' | 'closed' | 'rejected' | 'listener-closed' | 'failed' | 'superseded' | 'evicted';

/** One client's flow on a shared listening socket. */
export class DatagramFlowEndpoint {
  /** Client → listener, in arrival order; completes when the flow ends. */
  readonly datagrams$: Observable<Buffer>;
  readonly counts: DatagramCounts = { datagramsIn: 0, bytesIn: 0, datagramsOut: 0, bytesOut: 0, dropped: 0 };
  /** The first error sending to the client, if any. */
  sendError: Error | undefined;
  private queue: Buffer[] | undefined = [];
  private queuedBytes = 0;
  private readonly subscribers = new Set<Subscriber<Buffer>>();
  private endedBy: DatagramFlowEnd | undefined;
  private readonly endListeners: ((reason: DatagramFlowEnd) => void)[] = [];
  /** When the last datagram either way was seen (Date.now()). */
  private lastActivity = Date.now();

  constructor(
    private readonly socket: dgram.Socket,
    readonly peer: DatagramPeer,
    private readonly maxQueued: number,
    /** Called on every datagram either way, to restart the idle clock. */
    private readonly touch: () => void,
    /** The table's queued bytes, which this flow's count towards until it is subscribed or ends. */
    private readonly share: QueueShare = { bytes: 0 },
  ) {
    this.datagrams$ = new Observable<Buffer>((subscriber) => {
      const queued = this.queue;
      this.queue = undefined;
      this.releaseQueue();
      for (const payload of queued ?? []) subscriber.next(payload);
      if (this.endedBy !== undefined) {
        subscriber.complete();
        return;
      }
      this.subscribers.add(subscriber);
      return () => this.subscribers.delete(subscriber);
    });
  }

  get ended(): DatagramFlowEnd | undefined {
    return this.endedBy;
  }

  /** How long no datagram went either way (ms): a backend may ask the kernel again after a silence. */
  get idleMs(): number {
    return Date.now() - this.lastActivity;
  }

  /** A datagram from the client. */
  push(payload: Buffer): void {
    if (this.endedBy !== undefined) return;
    this.counts.datagramsIn++;
    this.counts.bytesIn += payload.length;
    this.lastActivity = Date.now();
    this.touch();
    if (this.queue !== undefined) {
      const bytes = payload.length;
      if (this.queue.length < this.maxQueued && this.queuedBytes + bytes <= MAX_QUEUED_BYTES_PER_FLOW && this.share.bytes + bytes <= MAX_QUEUED_BYTES_PER_TABLE) {
        this.queue.push(payload);
        this.queuedBytes += bytes;
        this.share.bytes += bytes;
      } else this.counts.dropped++;
      return;
    }
    for (const subscriber of this.subscribers) subscriber.next(payload);
  }

  /** A datagram to the client, from the listener's socket. Ignored once the flow has ended. */
  send(payload: Buffer): void {
    if (this.endedBy !== undefined) return;
    this.counts.datagramsOut++;
    this.counts.bytesOut += payload.length;
    this.lastActivity = Date.now();
    this.touch();
    this.socket.send(payload, this.peer.port, this.peer.address, (error) => {
      if (error !== null && error !== undefined) this.sendError ??= error;
    });
  }

  onEnd(listener: (reason: DatagramFlowEnd) => void): void {
    if (this.endedBy !== undefined) listener(this.endedBy);
    else this.endListeners.push(listener);
  }

  /** The queue no longer counts towards the table's share (subscribed, or the flow ended). */
  private releaseQueue(): void {
    this.share.bytes -= this.queuedBytes;
    this.queuedBytes = 0;
  }

  /**
   * Ends the flow: completes `datagrams$` (after any still queued, for a late subscriber),
   * once. Its queue stops counting towards the table's share: the flow has left the table.
   */
  end(reason: DatagramFlowEnd): void {
    if (this.endedBy !== undefined) return;
    this.endedBy = reason;
    this.releaseQueue();
    for (const subscriber of [...this.subscribers]) subscriber.complete();
    this.subscribers.clear();
    for (const listener of this.endListeners.splice(0)) listener(reason);
  }
}

export interface DatagramFlowTableOptions<THeader = undefined> {
  readonly idleTimeoutMs: number;
  readonly maxFlows: number;
  readonly maxQueued: number;
  /**
   * A datagram from a client with no open flow: `flow` is new and holds it. Throwing ends
   * the flow (`failed`) and drops the datagram; the error goes to `refused`.
   */
  opened(flow: DatagramFlowEndpoint, header: THeader): void;
  /**
   * Where each datagram starts with framing (the embedded backend's per-datagram flow
   * header): returns the payload and the header; `flow` is the open flow of this peer,
   * undefined for a new one, and `opening` the header that flow was opened with (kept by
   * the table). Throwing drops the datagram; the error goes to `refused`.
   */
  readonly unwrap?: (
    datagram: Buffer,
    peer: DatagramPeer,
    flow: DatagramFlowEndpoint | undefined,
    opening: THeader | undefined,
  ) => { readonly payload: Buffer; readonly header: THeader; readonly newFlow?: boolean };
  /** A new client's datagram was dropped: the table is full, or `opened` threw. */
  refused(peer: DatagramPeer, reason: { readonly kind: 'full' } | { readonly kind: 'failed'; readonly error: unknown }): void;
  /**
   * Who owns the socket that sent a new flow's first datagram (a uid; undefined when the
   * kernel cannot say, one owner for all such flows). With it a full table is shared
   * fairly rather than first come, first served: a new flow whose owner holds fewer
   * flows than the largest holder, by two or more, evicts that holder's least recently
   * active flow (`evicted`); otherwise it is refused as before. One user opening
   * `maxFlows` flows (one datagram each) no longer shuts every other user out.
   */
  readonly owner?: (peer: DatagramPeer, header: THeader) => number | undefined;
}

const key = (address: string, port: number): string => `${address}|${port}`;

/** The flows of one listening socket. */
export class DatagramFlowTable<THeader = undefined> {
  private readonly flows = new Map<string, DatagramFlowEndpoint>();
  /** The open flows of each owner, when the table has an `owner` function. */
  private readonly byOwner = new Map<number | undefined, Set<DatagramFlowEndpoint>>();
  private readonly queued: QueueShare = { bytes: 0 };
  /** The header each open flow was opened with, for `unwrap` to compare later datagrams against. */
  private readonly openings = new WeakMap<DatagramFlowEndpoint, THeader>();
  private closed = false;

  constructor(
    private readonly socket: dgram.Socket,
    private readonly options: DatagramFlowTableOptions<THeader>,
  ) {
    socket.on('message', (payload, remote) => this.received(payload, remote));
  }

  get size(): number {
    return this.flows.size;
  }

  /** Ends every flow (`listener-closed`); later datagrams are ignored. */
  close(): void {
    this.closed = true;
    for (const flow of [...this.flows.values()]) flow.end('listener-closed');
  }

  private received(datagram: Buffer, remote: dgram.RemoteInfo): void {
    if (this.closed) return;
    const id = key(remote.address, remote.port);
    const existing = this.flows.get(id);
    const peer: DatagramPeer = { address: remote.address, port: remote.port, family: remote.family === 'IPv6' ? 6 : 4 };
    let payload = datagram;
    let header = undefined as THeader;
    let newFlow = false;
    if (this.options.unwrap !== undefined) {
      try {
        ({ payload, header, newFlow = false } = this.options.unwrap(datagram, peer, existing, existing === undefined ? undefined : this.openings.get(existing)));
      } catch (error) {
        return this.options.refused(peer, { kind: 'failed', error });
      }
    }
    if (existing !== undefined) {
      if (!newFlow) return existing.push(payload);
      // The framing says this datagram begins another flow from the same address and port:
      // the old one ends, the new one is opened (and judged) from its first datagram.
      existing.end('superseded');
    }
    const owner = this.options.owner?.(peer, header);
    if (this.flows.size >= this.options.maxFlows) {
      const victim = this.options.owner === undefined ? undefined : this.evictable(owner);
      if (victim === undefined) return this.options.refused(peer, { kind: 'full' });
      victim.end('evicted');
    }
    // One timer per flow, restarted (not recreated) on every datagram either way.
    const timer = setTimeout(() => flow.end('idle'), this.options.idleTimeoutMs).unref();
    const flow = new DatagramFlowEndpoint(this.socket, peer, this.options.maxQueued, () => timer.refresh(), this.queued);
    this.flows.set(id, flow);
    if (this.options.owner !== undefined) {
      const owned = this.byOwner.get(owner) ?? new Set();
      this.byOwner.set(owner, owned.add(flow));
    }
    flow.onEnd(() => {
      clearTimeout(timer);
      if (this.flows.get(id) === flow) this.flows.delete(id);
      const owned = this.byOwner.get(owner);
      if (owned?.delete(flow) === true && owned.size === 0) this.byOwner.delete(owner);
    });
    flow.push(payload);
    try {
      this.options.opened(flow, header);
      this.openings.set(flow, header);
    } catch (error) {
      flow.end('failed');
      this.options.refused(peer, { kind: 'failed', error });
    }
  }

  /**
   * The flow a new flow of `owner` may take the place of: the least recently active flow
   * of the largest holder, if that holder has at least two more flows than `owner` (so
   * two owners never take turns evicting each other). O(flows of that holder), and only
   * when the table is full.
   */
  private evictable(owner: number | undefined): DatagramFlowEndpoint | undefined {
    const mine = this.byOwner.get(owner)?.size ?? 0;
    let largest: Set<DatagramFlowEndpoint> | undefined;
    for (const owned of this.byOwner.values()) if (owned.size > (largest?.size ?? 0)) largest = owned;
    if (largest === undefined || largest.size < mine + 2) return undefined;
    let victim: DatagramFlowEndpoint | undefined;
    for (const flow of largest) if (victim === undefined || flow.idleMs > victim.idleMs) victim = flow;
    return victim;
  }
}
