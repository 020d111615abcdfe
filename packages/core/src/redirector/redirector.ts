import type net from 'node:net';
import { Observable, share, Subject, takeUntil } from 'rxjs';
import {
  type AcceptedFlow,
  type Backend,
  type BackendDefinition,
  type Endpoint,
  type InstallSpec,
  type Installation,
  remoteEndpoint,
} from '../backends/backend.js';
import { backendDefinition, DEFAULT_BACKEND, registeredBackendNames } from '../backends/backend-registry.js';
import { resolveMarkMask } from '../backends/mark-mask.js';
import { socketBytes } from '../net/kernel-splice.js';
import {
  type CoproxyError,
  DestinationOutsideRuleError,
  InvalidOptionsError,
  RedirectorClosedError,
  RedirectorIdInUseError,
} from '../model/errors.js';
import { assertRedirectorId } from '../model/redirector-id.js';
import { Accepted, type AcceptedConnection } from './accepted-connection.js';
import { attachEventLog } from './event-log.js';
import { admits, compileMatch, type MatchRule, type PortSpec } from '../model/match-rule.js';
import { AcceptedDatagram, type AcceptedDatagramFlow } from './datagram-flow.js';
import type { AcceptedDatagramFlowInit } from '../backends/backend.js';
import type { RedirectorEvent, RedirectorEventInit } from './redirector-events.js';
import { MAX_CONTEXT_BYTES, type BackendName, type RedirectorOptions } from './redirector-options.js';

/**
 * A vendor's redirect rule plus its local listener. Nothing happens until `accepted$` is
 * subscribed: the first subscription installs the rule and listens, the last
 * unsubscription removes the rule and closes the listener (open connections finish).
 */
export interface Redirector<TAccepted = AcceptedConnection> extends AsyncDisposable {
  readonly id: string;
  readonly priority: number;
  readonly backend: BackendName;
  /**
   * Redirected connections, one per flow this redirector takes; with `match.udpPorts`,
   * UDP flows too (`AcceptedDatagramFlow`, `transport: 'udp'`).
   */
  readonly accepted$: Observable<TAccepted>;
  /** Lifecycle and per-connection events; hot, completes on `close()`. */
  readonly events$: Observable<RedirectorEvent>;
  /** The listener while installed. */
  readonly listening: Endpoint | undefined;
  /** Resolves when the rule is installed (now, or on the next subscription), rejects if that fails. */
  installed(): Promise<Endpoint>;
  /** Uninstalls, completes `accepted$` and `events$`; open connections finish on their own. */
  close(): Promise<void>;
  /** As `close()`, and destroys every open accepted connection. */
  destroy(error?: Error): void;
}

const DEFAULT_HEADER_TIMEOUT_MS = 5000;
const DEFAULT_MAX_HEADER_BYTES = 4096;
const INT32 = 2 ** 31;
/** As conntrack's own UDP timeout for a flow that has seen replies (nf_conntrack_udp_timeout_stream is 120 s; 30 s unreplied). */
const DEFAULT_UDP_IDLE_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_UDP_FLOWS = 4096;
const DEFAULT_UDP_QUEUED = 64;

/** Redirectors of this process by id, so a duplicate fails at creation. */
const byId = new Map<string, RedirectorImpl>();

/**
 * Creates a redirector. Validates everything up front and throws `InvalidOptionsError`
 * (or `RedirectorIdInUseError`, `BackendUnavailableError`) synchronously.
 *
 * @example
 * ```ts
 * const r = createRedirector({ id: 'acme-av', priority: 100, match: { ports: [80] } });
 * r.accepted$.subscribe({
 *   next: (conn) => {
 *     conn.connectOnward().then(
 *       (upstream) => relay(conn.socket, upstream),
 *       () => conn.socket.destroy(), // reported as an 'onward-failed' event
 *     );
 *   },
 *   error: (err) => console.error('redirector stopped', err), // install failed, listener died
 * });
 * ```
 */
export function createRedirector(options: RedirectorOptions & { readonly match: UdpMatchRule }): Redirector<AcceptedConnection | AcceptedDatagramFlow>;
export function createRedirector(options: RedirectorOptions): Redirector;
export function createRedirector(options: RedirectorOptions): Redirector<AcceptedConnection | AcceptedDatagramFlow> {
  const { spec, definition } = validate(options);
  const backend = definition.open();
  const previous = byId.get(spec.id);
  if (previous?.isOpen === true) throw new RedirectorIdInUseError(spec.id, process.pid);
  // A closed predecessor may still be undoing an install: the successor's first install
  // waits for it, so the id can be reused at once after close() or destroy().
  const redirector: RedirectorImpl = new RedirectorImpl(spec, options.backend ?? DEFAULT_BACKEND, backend, previous?.settled ?? Promise.resolve());
  byId.set(spec.id, redirector);
  attachEventLog(redirector); // COPROXY_EVENT_LOG, opt-in: nothing when unset
  return redirector;
}

/**
 * A rule that names UDP ports. `createRedirector` types `accepted$` from the rule: TCP
 * connections only, unless the rule's type says it has `udpPorts`, then
 * `AcceptedConnection | AcceptedDatagramFlow` (tell them apart by `transport`). A rule
 * typed as a plain `MatchRule` that carries `udpPorts` at run time still yields UDP
 * flows: type such a rule as `UdpMatchRule`, or check `transport`.
 */
export type UdpMatchRule = MatchRule & { readonly udpPorts: readonly PortSpec[] };

/** `'a'`, `'a' or 'b'`, `'a', 'b' or 'c'`. */
function oneOf(names: readonly string[]): string {
  const quoted = names.map((name) => `'${name}'`);
  return quoted.length <= 1 ? quoted.join('') : `${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)!}`;
}

/** The generic checks here; what only one backend constrains, its registry entry checks. */
function validate(options: RedirectorOptions): { spec: InstallSpec; definition: BackendDefinition } {
  if (typeof options !== 'object' || options === null) throw new InvalidOptionsError('must be an object', 'options');
  assertRedirectorId(options.id);
  if (!Number.isInteger(options.priority) || options.priority < -INT32 || options.priority >= INT32) {
    throw new InvalidOptionsError(`must be an integer in -2^31..2^31-1, got ${String(options.priority)}`, 'priority');
  }
  const failMode = options.failMode ?? 'open';
  if (failMode !== 'open' && failMode !== 'closed') throw new InvalidOptionsError(`must be 'open' or 'closed'`, 'failMode');
  const backend: string = options.backend ?? DEFAULT_BACKEND;
  const definition = typeof backend === 'string' ? backendDefinition(backend) : undefined;
  if (definition === undefined) {
    throw new InvalidOptionsError(`must be ${oneOf(registeredBackendNames())}, got ${JSON.stringify(backend)}`, 'backend');
  }
  if (options.context !== undefined && (!(options.context instanceof Uint8Array) || options.context.length > MAX_CONTEXT_BYTES)) {
    throw new InvalidOptionsError(`must be at most ${MAX_CONTEXT_BYTES} bytes`, 'context');
  }
  const host = options.listen?.host ?? '127.0.0.1';
  const port = options.listen?.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidOptionsError('must be 0..65535', 'listen.port');
  const positive = (value: number | undefined, fallback: number, option: string): number => {
    const result = value ?? fallback;
    if (!Number.isInteger(result) || result <= 0) throw new InvalidOptionsError('must be a positive integer', option);
    return result;
  };
  const spec: InstallSpec = {
    id: options.id,
    priority: options.priority,
    match: compileMatch(options.match),
    failMode,
    context: options.context === undefined ? undefined : Buffer.from(options.context),
    listen: { host, port },
    registry: options.registry,
    headerTimeoutMs: positive(options.headerTimeoutMs, DEFAULT_HEADER_TIMEOUT_MS, 'headerTimeoutMs'),
    maxHeaderBytes: positive(options.maxHeaderBytes, DEFAULT_MAX_HEADER_BYTES, 'maxHeaderBytes'),
    // The option's form, whatever the backend; the backend may read more (nftables: COPROXY_MARK_MASK).
    markMask: resolveMarkMask(options.markMask, undefined),
    ...(options.match?.udpPorts !== undefined && {
      udp: {
        idleTimeoutMs: positive(options.udpIdleTimeoutMs, DEFAULT_UDP_IDLE_TIMEOUT_MS, 'udpIdleTimeoutMs'),
        maxFlows: positive(options.maxUdpFlows, DEFAULT_MAX_UDP_FLOWS, 'maxUdpFlows'),
        maxQueued: DEFAULT_UDP_QUEUED,
      },
    }),
  };
  return { spec: definition.specify(spec, { markMask: options.markMask }), definition };
}

type Waiter = { resolve(listening: Endpoint): void; reject(error: unknown): void };

class RedirectorImpl implements Redirector<AcceptedConnection | AcceptedDatagramFlow> {
  readonly id: string;
  readonly priority: number;
  readonly accepted$: Observable<AcceptedConnection | AcceptedDatagramFlow>;
  readonly events$: Observable<RedirectorEvent>;

  private readonly openFlows = new Set<AcceptedDatagram>();
  private readonly events = new Subject<RedirectorEvent>();
  private readonly closing = new Subject<void>();
  private readonly open = new Set<net.Socket>();
  private installation: Installation | undefined;
  /** Settles when the latest installation has been undone (or never happened). */
  private lifecycle: Promise<void>;
  private waiters: Waiter[] = [];
  private sequence = 0;
  private closed = false;

  constructor(
    private readonly spec: InstallSpec,
    readonly backend: BackendName,
    private readonly impl: Backend,
    predecessor: Promise<void>,
  ) {
    this.lifecycle = predecessor;
    this.id = spec.id;
    this.priority = spec.priority;
    this.events$ = this.events.asObservable();
    this.accepted$ = new Observable<AcceptedConnection | AcceptedDatagramFlow>((subscriber) => {
      if (this.closed) {
        subscriber.error(new RedirectorClosedError(this.id));
        return;
      }
      let tornDown = false;
      let installation: Installation | undefined;
      // Installations of one redirector run one after the other: a resubscription waits
      // until the previous installation is fully undone, so it never meets its own entry.
      let settle!: () => void;
      const previous = this.lifecycle;
      this.lifecycle = new Promise((resolve) => (settle = resolve));
      const sink = {
        accepted: (flow: AcceptedFlow) => {
          if (tornDown) return void flow.socket.destroy();
          // I7, whatever the redirect layer claims (a PROXY header, SO_ORIGINAL_DST, WFP):
          // a flow this redirector's rule does not take is refused, never dialled.
          if (!admits(this.spec.match, flow.originalDestination)) {
            const remote = remoteEndpoint(flow.socket);
            flow.socket.destroy();
            this.emit({ type: 'rejected', error: new DestinationOutsideRuleError(this.id, flow.originalDestination), remote });
            return;
          }
          subscriber.next(this.track(flow));
        },
        acceptedDatagram: (flow: AcceptedDatagramFlowInit) => {
          if (tornDown) return void flow.endpoint.end('listener-closed');
          if (!admits(this.spec.match, flow.originalDestination, 'udp')) {
            flow.endpoint.end('failed');
            const error = new DestinationOutsideRuleError(this.id, flow.originalDestination);
            this.emit({ type: 'rejected', error, remote: { address: flow.source.address, port: flow.source.port } });
            return;
          }
          subscriber.next(this.trackDatagram(flow));
        },
        rejected: (error: CoproxyError, remote: Partial<Endpoint>) => this.emit({ type: 'rejected', error, remote }),
        failed: (error: Error) => subscriber.error(error),
      };
      void previous
        .then(() => (tornDown ? undefined : this.impl.install(this.spec, sink)))
        .then(
          (done) => {
            if (done === undefined) return settle();
            if (tornDown) {
              done.uninstall();
              return settle();
            }
            installation = this.installation = done;
            this.emit({ type: 'installed', backend: this.backend, listening: done.listening });
            for (const waiter of this.waiters.splice(0)) waiter.resolve(done.listening);
          },
          (error: unknown) => {
            settle();
            for (const waiter of this.waiters.splice(0)) waiter.reject(error);
            subscriber.error(error);
          },
        );
      return () => {
        tornDown = true;
        if (installation === undefined) return; // an install in flight undoes itself
        installation.uninstall();
        this.installation = undefined;
        this.emit({ type: 'uninstalled' });
        settle();
      };
    }).pipe(takeUntil(this.closing), share());
  }

  /** @internal */
  get isOpen(): boolean {
    return !this.closed;
  }

  /** @internal settles once every installation of this redirector is undone. */
  get settled(): Promise<void> {
    return this.lifecycle;
  }

  get listening(): Endpoint | undefined {
    return this.installation?.listening;
  }

  installed(): Promise<Endpoint> {
    if (this.closed) return Promise.reject(new RedirectorClosedError(this.id));
    if (this.installation !== undefined) return Promise.resolve(this.installation.listening);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  close(): Promise<void> {
    if (this.closed) return this.lifecycle;
    this.closed = true;
    this.closing.next(); // completes accepted$ subscribers; share() then tears down
    this.closing.complete();
    for (const waiter of this.waiters.splice(0)) waiter.reject(new RedirectorClosedError(this.id));
    // The id may be reused at once (see createRedirector); the map entry goes when the
    // last installation is undone, unless a successor has taken it.
    this.lifecycle = this.lifecycle.then(() => {
      if (byId.get(this.id) === this) byId.delete(this.id);
      this.events.complete();
    });
    return this.lifecycle;
  }

  destroy(error?: Error): void {
    void this.close();
    for (const socket of this.open) socket.destroy(error);
    for (const flow of this.openFlows) flow.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  private emit(event: RedirectorEventInit): void {
    if (!this.events.observed) return; // per-connection events cost nothing unobserved
    this.events.next({ ...event, redirectorId: this.id, at: Date.now() });
  }

  private trackDatagram(flow: AcceptedDatagramFlowInit): AcceptedDatagramFlow {
    const id = `${this.id}#${++this.sequence}`;
    const accepted = new AcceptedDatagram(id, this.id, this.spec.match, flow, (event) => this.emit(event));
    this.openFlows.add(accepted);
    flow.endpoint.onEnd((endedBy) => {
      this.openFlows.delete(accepted);
      for (const onward of accepted.onward) onward.close();
      const { counts } = flow.endpoint;
      const error =
        flow.endpoint.sendError ??
        (accepted.rejectReason === undefined ? undefined : new Error(`rejected: ${accepted.rejectReason}`, { cause: accepted.rejectError }));
      this.emit({
        type: 'closed',
        connectionId: id,
        transport: 'udp',
        endedBy,
        bytesFromClient: counts.bytesIn,
        bytesToClient: counts.bytesOut,
        datagramsFromClient: counts.datagramsIn,
        datagramsToClient: counts.datagramsOut,
        ...(error !== undefined && { error }),
      });
    });
    this.emit({
      type: 'accepted',
      connectionId: id,
      transport: 'udp',
      source: accepted.source,
      originalDestination: accepted.originalDestination,
      state: accepted.state,
      redirectedBy: accepted.records.redirectedBy,
    });
    return accepted;
  }

  private track(flow: AcceptedFlow): AcceptedConnection {
    const id = `${this.id}#${++this.sequence}`;
    const connection = new Accepted(id, this.id, this.spec.match, flow, (event) => this.emit(event));
    const { socket } = flow;
    this.open.add(socket);
    let lastError: Error | undefined;
    // Always listened for, so a peer's reset can never crash the process, even when the
    // vendor's code forgets to handle 'error'; the error is reported with 'closed'.
    socket.on('error', (error) => (lastError = error));
    socket.once('close', () => {
      this.open.delete(socket);
      const bytes = socketBytes(socket);
      this.emit({
        type: 'closed',
        connectionId: id,
        bytesFromClient: Math.max(0, bytes.read - flow.framingBytes),
        bytesToClient: bytes.written,
        ...(lastError !== undefined && { error: lastError }),
        ...(connection.onwardError !== undefined && { onwardError: connection.onwardError }),
      });
    });
    this.emit({
      type: 'accepted',
      connectionId: id,
      source: connection.source,
      originalDestination: connection.originalDestination,
      state: connection.state,
      redirectedBy: connection.records.redirectedBy,
    });
    return connection;
  }
}
