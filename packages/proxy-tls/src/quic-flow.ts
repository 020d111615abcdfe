import { type AcceptedDatagramFlow, type OnwardDatagramSocket, errorCodeOf } from '@coproxy/core';
import type { Subscription } from 'rxjs';
import { type ClientHello, ClientHelloError } from './client-hello.js';
import { TlsErrorCode } from './errors.js';
import type { QuicAction, QuicHandshake, UnrecognisedAction, UnrecognisedReason } from './events.js';
import { ja3, ja4 } from './fingerprint.js';
import type { Action, HandshakeFacts, PolicyDecision } from './policy.js';
import { type MemoryAccount, QuicInitialError, QuicInitialReader, type QuicInitialSummary } from './quic-initial.js';
import type { Reporter } from './reporter.js';

/**
 * The vendor side of one QUIC flow: the client's first datagrams are held and read until
 * the ClientHello of its Initial is whole, the policy decides, and only then is anything
 * forwarded (I6): `relay` opens the onward socket and sends the held datagrams, in order,
 * then every datagram both ways byte for byte; `block` rejects the flow (the client gets
 * ICMP port unreachable and falls back to TCP at once). A flow that is no readable QUIC
 * Initial follows the `unrecognised` policy; a flow that stalls before its hello is whole
 * is rejected, never relayed.
 */

export type { AcceptedDatagramFlow, OnwardDatagramSocket } from '@coproxy/core';

/** What this module uses of core's onward datagram socket (its counts and local address are not read). */
export type QuicOnwardSocket = Pick<OnwardDatagramSocket, 'send' | 'datagrams$' | 'close'>;

/**
 * What this module uses of core's `AcceptedDatagramFlow` (records, state and context are
 * not read here; `connectOnward()` carries the records on its own): the proxy hands in
 * core's flow, tests a fake of this shape.
 */
export type QuicFlow = Pick<AcceptedDatagramFlow, 'transport' | 'id' | 'originalDestination' | 'source' | 'datagrams$' | 'send' | 'reject' | 'close'> & {
  connectOnward(): Promise<QuicOnwardSocket>;
};

export interface QuicFlowOptions {
  readonly policy: (facts: HandshakeFacts) => PolicyDecision;
  readonly unrecognised: UnrecognisedAction;
  readonly reporter: Reporter;
  /** How long a flow may take to send a whole hello (default 10 s, as on TCP). */
  readonly helloTimeoutMs?: number;
  /** The largest ClientHello accepted (default 64 KiB). */
  readonly maxHelloBytes?: number;
  /** The most datagrams read before the hello is whole (default 16). */
  readonly maxDatagrams?: number;
  /** The most bytes held unforwarded, before the decision and while the onward socket opens (default 256 KiB). */
  readonly maxHeldBytes?: number;
  /** Shared by every flow of the proxy: see {@link QuicMemoryBudget} (default: unbounded, for one flow in a test). */
  readonly budget?: MemoryAccount;
}

/** The default {@link QuicMemoryBudget}: some 13,000 honest handshakes (Chromium's Initials hold ~2.5 KB), a few hundred hostile ones. */
export const DEFAULT_QUIC_MEMORY_BYTES = 32 * 1024 * 1024;

/**
 * What every QUIC flow of one proxy holds together: the datagrams kept until the decision
 * (and while the onward socket opens) and each reader's CRYPTO stream (kept, shrunk to the
 * hello, while the flow is relayed). Per-flow bounds alone let many flows add up: a UDP
 * flow costs its sender one datagram, and one 1,200-byte Initial could make a reader
 * allocate ~130 KB. A flow that would pass the budget is rejected (`QUIC_BUSY`, the client
 * falls back to TCP, where it is inspected), whatever the unrecognised policy: under load
 * QUIC degrades to TCP, the proxy's memory does not grow.
 */
export class QuicMemoryBudget implements MemoryAccount {
  private usedBytes = 0;
  constructor(readonly limit = DEFAULT_QUIC_MEMORY_BYTES) {}
  get used(): number {
    return this.usedBytes;
  }
  take(bytes: number): boolean {
    if (this.usedBytes + bytes > this.limit) return false;
    this.usedBytes += bytes;
    return true;
  }
  give(bytes: number): void {
    this.usedBytes -= bytes;
  }
}

/** How a flow ended, for the caller and the tests. */
export type QuicFlowOutcome =
  | { readonly kind: 'relayed'; readonly handshake: QuicHandshake | undefined }
  | { readonly kind: 'blocked'; readonly handshake: QuicHandshake | undefined; readonly reason: string }
  | { readonly kind: 'failed'; readonly code: string }
  | { readonly kind: 'ended' };

export interface QuicFlowHandle {
  /** Settles when the flow has ended, however it ended. */
  readonly done: Promise<QuicFlowOutcome>;
  /** Ends the flow now (the proxy is closing): the onward socket and the flow are closed. */
  close(): void;
}

/** A flow's life: reading its hello, opening the onward socket, relaying, or over. */
type FlowState =
  | { readonly kind: 'reading' }
  | { readonly kind: 'connecting'; readonly handshake: QuicHandshake | undefined }
  | { readonly kind: 'relaying'; readonly handshake: QuicHandshake | undefined; readonly onward: QuicOnwardSocket; readonly subscription: Subscription }
  | { readonly kind: 'over' };

/** QUIC cannot be bumped: a bump decision blocks the flow, so that the client falls back to TCP, where it is bumped. */
function quicAction(action: Action): { action: QuicAction; note: string | undefined } {
  switch (action) {
    case 'splice':
      return { action: 'relay', note: undefined };
    case 'block':
      return { action: 'block', note: undefined };
    case 'bump':
      return { action: 'block', note: 'QUIC cannot be bumped: blocked so that the client falls back to TCP, where it is bumped' };
  }
}

/** Serves one QUIC flow: see the module comment. */
export function serveQuicFlow(flow: QuicFlow, options: QuicFlowOptions): QuicFlowHandle {
  const { reporter, policy, unrecognised } = options;
  const { logger } = reporter;
  const maxHeldBytes = options.maxHeldBytes ?? 262_144;
  /** This flow's share of the budget, all given back when it ends. */
  let charged = 0;
  const account: MemoryAccount = {
    take(bytes) {
      if (options.budget !== undefined && !options.budget.take(bytes)) return false;
      charged += bytes;
      return true;
    },
    give(bytes) {
      charged -= bytes;
      options.budget?.give(bytes);
    },
  };
  const reader = new QuicInitialReader({
    ...(options.maxHelloBytes !== undefined && { maxHelloBytes: options.maxHelloBytes }),
    ...(options.maxDatagrams !== undefined && { maxDatagrams: options.maxDatagrams }),
    memory: account,
  });
  const held: Buffer[] = [];
  let heldBytes = 0;
  let state: FlowState = { kind: 'reading' };
  /** The client's datagrams; unset until subscribe returns (a synchronous source may end the flow inside it). */
  const client: { subscription?: Subscription } = {};
  let settle: (outcome: QuicFlowOutcome) => void = () => undefined;
  const done = new Promise<QuicFlowOutcome>((resolve) => (settle = resolve));

  const timer = setTimeout(() => {
    if (state.kind !== 'reading') return;
    const message = `no whole ClientHello in the flow's QUIC Initials within ${options.helloTimeoutMs ?? 10_000} ms`;
    // Like a stalled TLS stream: rejected whatever the unrecognised policy, never relayed.
    reporter.fail('hello-rejected', flow.id, TlsErrorCode.HelloTimeout, message);
    end({ kind: 'failed', code: TlsErrorCode.HelloTimeout }, 'reject', message);
  }, options.helloTimeoutMs ?? 10_000);

  /** Ends the flow once: stops reading, closes the onward socket, and closes or rejects the flow. */
  function end(outcome: QuicFlowOutcome, how: 'close' | 'reject', reason = ''): void {
    if (state.kind === 'over') return;
    const previous = state;
    state = { kind: 'over' };
    clearTimeout(timer);
    held.length = 0;
    heldBytes = 0;
    account.give(charged);
    client.subscription?.unsubscribe();
    if (previous.kind === 'relaying') {
      previous.subscription.unsubscribe();
      previous.onward.close();
    }
    if (how === 'reject') flow.reject(reason);
    else flow.close();
    settle(outcome);
  }

  /** Holds a datagram; false once the bound is passed (the last one is still held, so a relay stays byte for byte). The caller charged it to the budget. */
  function hold(datagram: Buffer): boolean {
    heldBytes += datagram.length;
    held.push(datagram);
    return heldBytes <= maxHeldBytes;
  }

  /** The budget shared by the proxy's flows is spent: this flow is rejected, never relayed unread. */
  function busy(message: string): void {
    reporter.fail('hello-rejected', flow.id, TlsErrorCode.QuicBusy, message);
    end({ kind: 'failed', code: TlsErrorCode.QuicBusy }, 'reject', 'QUIC memory budget spent');
  }

  function decide(hello: ClientHello, summary: QuicInitialSummary): void {
    const fingerprint = { ja3: ja3(hello), ja4: ja4(hello, 'quic') };
    const sniAnomaly = hello.serverNameAnomaly;
    const ech = hello.ech !== undefined;
    const decision = policy({ sni: hello.serverName, sniAnomaly, alpn: hello.alpn, ja3: fingerprint.ja3.hash, ja4: fingerprint.ja4, ech, quic: true });
    const { action, note } = quicAction(decision.action);
    const handshake: QuicHandshake = {
      transport: 'quic',
      flowId: flow.id,
      destination: flow.originalDestination,
      source: flow.source,
      quicVersion: summary.versionName,
      sni: hello.serverName,
      ...(sniAnomaly !== undefined && { sniAnomaly }),
      alpn: hello.alpn,
      ja3: fingerprint.ja3.hash,
      ja4: fingerprint.ja4,
      ech,
      initialPackets: summary.packets,
      datagrams: summary.datagrams,
      action,
      rule: decision.rule,
      ...(note !== undefined && { note }),
    };
    // A log line, the quic_flows metric, a quic-handshake event and quicHandshakes$.
    reporter.quicHandshake(handshake);
    switch (action) {
      case 'relay':
        relay(handshake);
        return;
      case 'block':
        end({ kind: 'blocked', handshake, reason: note ?? 'blocked by policy' }, 'reject', note ?? 'blocked by policy');
        return;
    }
  }

  function onUnreadable(error: QuicInitialError | ClientHelloError, first: Buffer): void {
    const reason: UnrecognisedReason = error.code === TlsErrorCode.QuicNotInitial ? 'unknown' : 'malformed-quic';
    if (reason === 'malformed-quic') reporter.fail('hello-rejected', flow.id, error.code, error.message);
    reporter.metrics.unrecognised.inc({ action: unrecognised });
    const facts = { connectionId: flow.id, action: unrecognised, reason, ...(reason === 'malformed-quic' && { code: error.code }) };
    const firstBytes = first.subarray(0, 16).toString('hex');
    if (unrecognised === 'block') logger.warn({ ...facts, transport: 'quic', firstBytes }, 'unrecognised');
    else logger.info({ ...facts, transport: 'quic', firstBytes }, 'unrecognised');
    reporter.emit({ type: 'unrecognised', ...facts });
    switch (unrecognised) {
      case 'relay':
        relay(undefined);
        return;
      case 'block':
        end({ kind: 'blocked', handshake: undefined, reason: `unrecognised: ${reason}` }, 'reject', `unrecognised: ${reason}`);
        return;
    }
  }

  function relay(handshake: QuicHandshake | undefined): void {
    clearTimeout(timer);
    state = { kind: 'connecting', handshake };
    flow.connectOnward().then(
      (onward) => {
        if (state.kind !== 'connecting') {
          onward.close(); // the flow ended while the socket opened
          return;
        }
        const subscription = onward.datagrams$.subscribe({
          next: (datagram) => flow.send(datagram),
          error: (error: unknown) => {
            reporter.fail('connection-failed', flow.id, errorCodeOf(error, TlsErrorCode.Reset), (error as Error).message);
            end({ kind: 'failed', code: errorCodeOf(error, TlsErrorCode.Reset) }, 'close');
          },
          complete: () => end({ kind: 'relayed', handshake }, 'close'),
        });
        // The onward socket may have ended already, inside subscribe.
        if (state.kind !== 'connecting') {
          subscription.unsubscribe();
          onward.close();
          return;
        }
        state = { kind: 'relaying', handshake, onward, subscription };
        for (const datagram of held.splice(0)) onward.send(datagram);
        account.give(heldBytes);
        heldBytes = 0;
      },
      (error: unknown) => {
        const code = errorCodeOf(error, TlsErrorCode.OriginUnreachable);
        reporter.fail('connection-failed', flow.id, code, (error as Error).message);
        // The client learns at once, and may retry over TCP.
        end({ kind: 'failed', code }, 'reject', 'onward socket failed');
      },
    );
  }

  /**
   * A datagram after the decision, checked before it goes on (I6): an Initial of another
   * connection on the same flow, or CRYPTO bytes other than the hello's, would reach the
   * server with a hello the policy never judged. On a fault the flow is rejected (the client
   * falls back to TCP). A flow relayed unread by the unrecognised policy is not checked.
   */
  function checked(datagram: Buffer): boolean {
    if (state.kind !== 'connecting' && state.kind !== 'relaying') return false;
    if (state.handshake === undefined) return true;
    try {
      reader.check(datagram);
      return true;
    } catch (error) {
      const code = errorCodeOf(error, TlsErrorCode.Internal);
      reporter.fail('connection-failed', flow.id, code, (error as Error).message);
      end({ kind: 'failed', code }, 'reject', 'an Initial the policy did not judge');
      return false;
    }
  }

  function onDatagram(datagram: Buffer): void {
    switch (state.kind) {
      case 'reading': {
        if (!account.take(datagram.length)) return busy(`QUIC flows hold their memory budget; a ${datagram.length}-byte datagram was not held`);
        if (!hold(datagram)) {
          const error = new QuicInitialError(TlsErrorCode.QuicTooLarge, `more than ${maxHeldBytes} bytes before a whole ClientHello`, held.length, 0);
          onUnreadable(error, held[0]!);
          return;
        }
        let result;
        try {
          result = reader.push(datagram);
        } catch (error) {
          if (error instanceof QuicInitialError && error.code === TlsErrorCode.QuicBusy) return busy(error.message);
          if (error instanceof QuicInitialError || error instanceof ClientHelloError) {
            onUnreadable(error, held[0]!);
            return;
          }
          // A fault of this code, not of the peer: the flow is rejected, never relayed.
          reporter.fail('hello-rejected', flow.id, TlsErrorCode.Internal, (error as Error).message);
          end({ kind: 'failed', code: TlsErrorCode.Internal }, 'reject', 'internal error');
          return;
        }
        if (result.done) decide(result.hello, result.summary);
        return;
      }
      case 'connecting':
        if (!checked(datagram)) return;
        // UDP may drop: past the bound, a datagram is dropped and the client retransmits.
        if (heldBytes + datagram.length > maxHeldBytes || !account.take(datagram.length)) {
          logger.debug({ connectionId: flow.id, bytes: datagram.length }, 'quic datagram dropped while the onward socket opens');
        } else hold(datagram);
        return;
      case 'relaying':
        if (!checked(datagram)) return;
        state.onward.send(datagram);
        return;
      case 'over':
        return;
    }
  }

  client.subscription = flow.datagrams$.subscribe({
    next: onDatagram,
    error: (error: unknown) => {
      const code = errorCodeOf(error, TlsErrorCode.Reset);
      reporter.fail('connection-failed', flow.id, code, (error as Error).message);
      end({ kind: 'failed', code }, 'close');
    },
    complete: () => {
      switch (state.kind) {
        case 'reading':
          // The flow ended (idle) before its hello was whole: nothing was forwarded.
          logger.info({ connectionId: flow.id, transport: 'quic', datagrams: held.length }, 'quic flow ended before a whole ClientHello');
          end({ kind: 'ended' }, 'close');
          return;
        case 'connecting':
        case 'relaying':
          end({ kind: 'relayed', handshake: state.handshake }, 'close');
          return;
        case 'over':
          return;
      }
    },
  });
  // The flow may have ended inside subscribe (a synchronous source).
  if ((state as FlowState).kind === 'over') client.subscription.unsubscribe();

  return { done, close: () => end({ kind: 'ended' }, 'close') };
}
