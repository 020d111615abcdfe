import type { AcceptedConnection, AcceptedDatagramFlow, Endpoint, MatchRule } from '@coproxy/core';
import { createVendorRedirector } from '@coproxy/core/vendor';
import pino from 'pino';
import type { Observable } from 'rxjs';
import { createBumper } from './bump.js';
import { CertificateAuthority } from './ca.js';
import { type Peeked, type Route, createDecision } from './decision.js';
import type { Handshake, QuicHandshake, TlsExchange, TlsOwnEvent, TlsProxyEvent } from './events.js';
import { peekFirstBytes } from './hello-peek.js';
import { TlsProxyMetrics } from './metrics.js';
import { type TlsProxyOptions, resolveSettings } from './options.js';
import { compilePolicy, loadPolicy, parsePolicy } from './policy.js';
import { type QuicFlowHandle, QuicMemoryBudget, serveQuicFlow } from './quic-flow.js';
import { Reporter } from './reporter.js';
import { type EarlyOnward, type OnwardSettings, cancelOnward, dialOnward, splice } from './splice.js';
import { tlsAlertRecord } from './tls-alert.js';

export interface TlsProxy extends AsyncDisposable {
  readonly id: string;
  readonly handshakes$: Observable<Handshake>;
  readonly exchanges$: Observable<TlsExchange>;
  /** Each QUIC flow whose Initial's ClientHello was read, and what the policy did with it (also `quic-handshake` on `events$`). */
  readonly quicHandshakes$: Observable<QuicHandshake>;
  readonly events$: Observable<TlsProxyEvent>;
  readonly metrics: TlsProxyMetrics;
  listening(): Promise<Endpoint>;
  close(): Promise<void>;
}

/**
 * A transparent inspecting TLS proxy on a coproxy redirector. It reads each redirected
 * connection's ClientHello with its own strict parser (SNI, ALPN, versions, suites, ECH,
 * JA3, JA4), asks the policy, then splices (forwards the bytes unchanged), blocks (a TLS
 * alert, then close) or bumps (terminates TLS with a leaf minted from a local CA, lets the
 * decrypted exchanges (HTTP/1.1 or HTTP/2, each leg what its ALPN chose) through
 * the inspectors and `exchanges$`, and re-encrypts to the origin, whose
 * certificate is verified). An HTTP/1.x request or the HTTP/2 preface is relayed byte for
 * byte (another vendor in the chain may inspect it); anything else follows the
 * `unrecognised` policy (block by default, or relay).
 *
 * UDP flows the rule takes (by default UDP/443, except on WFP, which redirects no UDP) are
 * QUIC: quic-flow.ts reads the ClientHello of their Initials, and the same policy relays
 * them (`splice`) or blocks them (`block`, and `bump`, which QUIC cannot do: the client
 * gets ICMP port unreachable and falls back to TCP, where it is bumped).
 *
 * This module only wires the concerns: hello-peek.ts reads the first bytes, decision.ts
 * turns them into a `Route` under the policy, splice.ts and bump.ts carry it out; the
 * redirector, its metrics and its lifecycle are core's vendor kit's.
 */
export function createTlsProxy(options: TlsProxyOptions): TlsProxy {
  const settings = resolveSettings(options);
  const logger = options.logger ?? pino({ level: 'silent' });
  const metrics = new TlsProxyMetrics();
  // The kit's emit once the vendor exists below: events come from connections, none before.
  const reporter = new Reporter(metrics, logger, (event) => vendor.emit(event));
  const policyFile = options.policy === undefined ? {} : typeof options.policy === 'string' ? loadPolicy(options.policy) : parsePolicy(options.policy);
  const needsCa = policyFile.default === 'bump' || (policyFile.rules ?? []).some((r) => r.action === 'bump');
  if (needsCa && options.ca === undefined) throw new TypeError("the policy bumps some handshakes: give the 'ca' option (a CA directory)");
  const caReady: Promise<CertificateAuthority> | undefined =
    options.ca === undefined ? undefined : options.ca instanceof CertificateAuthority ? Promise.resolve(options.ca) : CertificateAuthority.open({ dir: options.ca.dir });

  const onward: OnwardSettings = { connectTimeoutMs: settings.connectTimeoutMs, propagateRecords: options.propagateRecords ?? true };
  // One compiled policy for TCP decisions and QUIC flows alike.
  const policy = compilePolicy(policyFile);
  const decide = createDecision({ policy, unrecognised: settings.unrecognised, unbumpable: settings.unbumpable, reporter });
  const bumper = createBumper({ ca: caReady, originCa: options.originCa, onward, reporter, inspectors: options.inspectors ?? [], idleTimeoutMs: settings.idleTimeoutMs });

  const vendor = createVendorRedirector<TlsOwnEvent>({
    options,
    defaultMatch: defaultMatchFor(options.backend),
    // Counts open connections, bytes, records depth, accepted, rejected, onward failures, UDP flows.
    metrics,
    onAccepted: (conn) => void onAccepted(conn),
    onDatagramFlow: (flow) => onQuicFlow(flow),
    onFailed: (error) => {
      logger.error({ err: error }, 'redirector failed');
      reporter.handshakes.error(error);
    },
    // Ready once the CA, when there is one, is usable too: its files exist from then on.
    ...(caReady !== undefined && { ready: caReady }),
  });

  const earlyOnward = options.earlyOnward ?? false;
  let closed = false;
  /** QUIC flows being read or relayed: closed with the proxy. */
  const quicFlows = new Set<QuicFlowHandle>();
  // One memory budget for all of this proxy's QUIC flows (quic-flow.ts): many flows, each within its own bounds, still add up.
  const quicOptions = {
    policy,
    unrecognised: settings.unrecognised,
    reporter,
    helloTimeoutMs: settings.peek.helloTimeoutMs,
    maxHelloBytes: settings.peek.maxHelloBytes,
    budget: new QuicMemoryBudget(),
  };

  function onQuicFlow(flow: AcceptedDatagramFlow): void {
    if (closed) {
      flow.close();
      return;
    }
    const handle = serveQuicFlow(flow, quicOptions);
    quicFlows.add(handle);
    void handle.done.then(() => quicFlows.delete(handle));
  }

  async function onAccepted(conn: AcceptedConnection): Promise<void> {
    // With earlyOnward the connect overlaps the wait for the hello; nothing is written on it
    // before the decision, and it is closed unused when the flow is not spliced.
    const early = earlyOnward ? dialOnward(conn, onward) : undefined;
    const peeked: Peeked = await peekFirstBytes(conn.socket, settings.peek).catch((error: unknown) => ({ kind: 'failed', error }) as const);
    const route = decide(conn, peeked);
    if (early !== undefined && route.kind !== 'splice') cancelOnward(early, conn, reporter);
    return follow(conn, route, early);
  }

  function follow(conn: AcceptedConnection, route: Route, early: EarlyOnward | undefined): Promise<void> | undefined {
    switch (route.kind) {
      case 'drop':
        conn.socket.destroy();
        return undefined;
      case 'close':
        if (route.alert !== undefined) conn.socket.end(tlsAlertRecord(route.alert));
        conn.socket.destroySoon();
        return undefined;
      case 'splice':
        return splice(conn, route.head, onward, reporter, early);
      case 'bump':
        return bumper.bump(conn, route.hello, route.sni);
      default:
        return unreachable(route);
    }
  }

  vendor.listening().catch((error: unknown) => logger.debug({ err: error }, 'install failed'));

  return {
    id: options.id,
    handshakes$: reporter.handshakes.asObservable(),
    exchanges$: reporter.exchanges.asObservable(),
    quicHandshakes$: reporter.quicHandshakes.asObservable(),
    events$: vendor.events$,
    metrics,
    listening: () => vendor.listening(),
    async close() {
      if (closed) return;
      closed = true;
      // QUIC flows first: each closes its onward socket and ends its flow while events$ still reports it.
      for (const handle of quicFlows) handle.close();
      quicFlows.clear();
      await vendor.close();
      bumper.close();
      reporter.complete();
    },
    [Symbol.asyncDispose]() {
      return this.close();
    },
  };
}

/** TCP/443, and UDP/443 for QUIC where the backend redirects UDP (WFP does not: it refuses `udpPorts`). */
function defaultMatchFor(backend: TlsProxyOptions['backend']): MatchRule {
  return backend === 'wfp' ? { ports: [443] } : { ports: [443], udpPorts: [443] };
}

/** Adding a member to `Route` without a branch above breaks the build here. */
function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
