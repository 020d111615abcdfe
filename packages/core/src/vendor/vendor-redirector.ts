import { merge, type Observable, Subject, type Subscription } from 'rxjs';
import type { Endpoint } from '../backends/backend.js';
import type { AcceptedConnection } from '../redirector/accepted-connection.js';
import type { AcceptedDatagramFlow } from '../redirector/datagram-flow.js';
import type { MatchRule } from '../model/match-rule.js';
import type { RedirectorEvent } from '../redirector/redirector-events.js';
import type { RedirectorOptions } from '../redirector/redirector-options.js';
import { createRedirector, type Redirector } from '../redirector/redirector.js';
import type { RedirectorMetrics } from './redirector-metrics.js';

/**
 * The redirector options a vendor's own options type extends, so it never re-declares
 * them: `interface AcmeOptions extends VendorRedirectorOptions { readonly word: string }`.
 */
export type VendorRedirectorOptions = Pick<RedirectorOptions, 'id' | 'priority' | 'match' | 'backend' | 'failMode' | 'registry' | 'markMask'>;

/** Picks the redirector's options out of a vendor's wider options object. */
export function redirectorOptionsOf(options: VendorRedirectorOptions, defaultMatch: MatchRule): RedirectorOptions {
  return {
    id: options.id,
    priority: options.priority,
    match: options.match ?? defaultMatch,
    ...(options.backend !== undefined && { backend: options.backend }),
    ...(options.failMode !== undefined && { failMode: options.failMode }),
    ...(options.registry !== undefined && { registry: options.registry }),
    ...(options.markMask !== undefined && { markMask: options.markMask }),
  };
}

export interface VendorRedirectorSpec {
  /** The vendor's options; only the redirector's fields are read. */
  readonly options: VendorRedirectorOptions;
  /** The match rule when `options.match` is absent, e.g. `{ ports: [443] }` or `{ ports: [443], udpPorts: [443] }`. */
  readonly defaultMatch: MatchRule;
  /** Called for each redirected TCP connection; the vendor inspects it and calls `connectOnward()`. */
  readonly onAccepted: (connection: AcceptedConnection) => void;
  /**
   * Called for each redirected UDP flow, when the match rule names `udpPorts`. A vendor
   * that takes UDP gives it; without it a rule with `udpPorts` is refused at creation
   * (`TypeError`), so a UDP flow can never reach a vendor that would not inspect it.
   */
  readonly onDatagramFlow?: (flow: AcceptedDatagramFlow) => void;
  /** Counts the redirector's events (accepted, open, records depth, bytes, rejected, onward-failed, UDP flows and datagrams). */
  readonly metrics?: RedirectorMetrics;
  /**
   * The redirector stopped (install refused, listener lost): `listening()` rejects with the
   * same error. Runs once; a vendor ends its own streams with the error here.
   */
  readonly onFailed?: (error: Error) => void;
  /** Settles before `listening()` resolves, e.g. a CA that must be usable first. */
  readonly ready?: Promise<unknown>;
}

/**
 * What both reference vendors wired by hand around their redirector: the subscription,
 * the install promise, `events$` merged with the vendor's own, metrics, `close()`.
 */
export interface VendorRedirector<TEvent, TAccepted = AcceptedConnection> {
  /** Its `accepted$` carries UDP flows too (`transport: 'udp'`) when the spec has `onDatagramFlow`. */
  readonly redirector: Redirector<TAccepted>;
  /** The redirector's events then the vendor's (`emit`), in one stream; completes on close. */
  readonly events$: Observable<RedirectorEvent | TEvent>;
  /** Sends one of the vendor's events to `events$` (dropped when nobody listens). */
  emit(event: TEvent): void;
  /** Resolves once the rule is installed, the listener accepts and `ready` settled. */
  listening(): Promise<Endpoint>;
  /** Uninstalls; open connections finish on their own. Idempotent. */
  close(): Promise<void>;
  readonly closed: boolean;
}

/**
 * Creates the redirector from the vendor's options, subscribes to it, and gives the
 * lifecycle every vendor needs. Throws what `createRedirector` throws (synchronously).
 *
 * @example
 * ```ts
 * export interface AcmeOptions extends VendorRedirectorOptions { readonly word: string }
 * export function createAcme(options: AcmeOptions) {
 *   const metrics = new RedirectorMetrics({ prefix: 'acme' });
 *   const vendor = createVendorRedirector<AcmeEvent>({
 *     options,
 *     defaultMatch: { ports: [80] },
 *     metrics,
 *     onAccepted: (conn) => void inspect(conn),
 *   });
 *   return { events$: vendor.events$, metrics, listening: vendor.listening, close: vendor.close };
 * }
 * ```
 */
export function createVendorRedirector<TEvent = never>(
  spec: VendorRedirectorSpec & { readonly onDatagramFlow: (flow: AcceptedDatagramFlow) => void },
): VendorRedirector<TEvent, AcceptedConnection | AcceptedDatagramFlow>;
export function createVendorRedirector<TEvent = never>(spec: VendorRedirectorSpec): VendorRedirector<TEvent>;
export function createVendorRedirector<TEvent = never>(spec: VendorRedirectorSpec): VendorRedirector<TEvent, AcceptedConnection | AcceptedDatagramFlow> {
  const options = redirectorOptionsOf(spec.options, spec.defaultMatch);
  const onDatagramFlow = spec.onDatagramFlow;
  if (options.match?.udpPorts !== undefined && options.match.udpPorts.length > 0 && onDatagramFlow === undefined) {
    throw new TypeError(`redirector '${options.id}': the match rule names udpPorts but this vendor takes no UDP flows`);
  }
  // Typed wide: a rule typed as a plain MatchRule may still name udpPorts at run time.
  const redirector: Redirector<AcceptedConnection | AcceptedDatagramFlow> = createRedirector(options);
  const own = new Subject<TEvent>();
  const events$ = merge(redirector.events$, own);
  // Subscribed before accepted$, so the first 'installed' and 'accepted' events are counted.
  const metricsSubscription: Subscription | undefined = spec.metrics?.track(redirector.events$);
  let subscription: Subscription | undefined;
  let closed = false;
  const installed = new Promise<Endpoint>((resolve, reject) => {
    subscription = redirector.accepted$.subscribe({
      next: (accepted) => {
        if (accepted.transport !== 'udp') spec.onAccepted(accepted);
        else if (onDatagramFlow !== undefined) onDatagramFlow(accepted);
        else accepted.reject('this vendor takes no UDP flows'); // not reached: refused above
      },
      error: (error: unknown) => {
        const failure = error instanceof Error ? error : new Error(String(error));
        reject(failure);
        spec.onFailed?.(failure);
      },
    });
    Promise.all([redirector.installed(), spec.ready]).then(([listening]) => resolve(listening), reject);
  });
  // Reported through listening() and onFailed; a vendor that awaits neither must not meet
  // an unhandled rejection.
  installed.catch(() => undefined);
  return {
    redirector,
    events$,
    emit(event) {
      if (own.observed) own.next(event);
    },
    listening: () => installed,
    async close() {
      if (closed) return;
      closed = true;
      subscription?.unsubscribe();
      await redirector.close();
      metricsSubscription?.unsubscribe();
      own.complete();
    },
    get closed() {
      return closed;
    },
  };
}
