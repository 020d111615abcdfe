import { type AcceptedConnection, errorCodeOf } from '@coproxy/core';
import { BUMP_PROTOCOLS } from './bump.js';
import type { ClientHello } from './client-hello.js';
import { TlsErrorCode } from './errors.js';
import type { Handshake, UnbumpableAction, UnrecognisedAction } from './events.js';
import { ja3, ja4 } from './fingerprint.js';
import type { FirstBytes } from './hello-peek.js';
import type { Action, HandshakeFacts, PolicyDecision } from './policy.js';
import type { Reporter } from './reporter.js';
import { ALERT, type AlertDescription, looksLikeTls } from './tls-alert.js';

/** What the peek of a connection gave: its first bytes sorted, or the failure to read them. */
export type Peeked = FirstBytes | { readonly kind: 'failed'; readonly error: unknown };

/**
 * What becomes of one connection, decided once from its first bytes: each concern of the
 * proxy is one member, and proxy.ts switches over them exhaustively.
 */
export type Route =
  /** The client left before a byte: nothing to say, the socket is destroyed. */
  | { readonly kind: 'drop' }
  /** Refused: an alert first when the peer speaks TLS (`alert`), then the socket closes. */
  | { readonly kind: 'close'; readonly alert: AlertDescription | undefined }
  /** Relayed unchanged after the bytes already read (`head`). */
  | { readonly kind: 'splice'; readonly head: Buffer }
  /** TLS terminated with the CA: the ClientHello (`hello`) is replayed into it. */
  | { readonly kind: 'bump'; readonly hello: Buffer; readonly sni: string | undefined };

export interface DecisionOptions {
  readonly policy: (facts: HandshakeFacts) => PolicyDecision;
  readonly unrecognised: UnrecognisedAction;
  readonly unbumpable: UnbumpableAction;
  readonly reporter: Reporter;
}

/**
 * The policy decision for each connection, with the facts reported as it goes: a
 * recognised protocol is relayed, unrecognised bytes follow the `unrecognised` policy, a
 * ClientHello the policy file (and `unbumpable` when a bump cannot be done).
 */
export function createDecision({ policy, unrecognised, unbumpable, reporter }: DecisionOptions): (conn: AcceptedConnection, peeked: Peeked) => Route {
  const { metrics, logger } = reporter;

  function onUnrecognised(conn: AcceptedConnection, first: Extract<FirstBytes, { kind: 'unrecognised' }>): Route {
    const { reason, head, error } = first;
    if (error !== undefined) reporter.fail('hello-rejected', conn.id, error.code, error.message);
    else metrics.connections.inc({ kind: 'opaque' });
    const action = unrecognised;
    metrics.unrecognised.inc({ action });
    const facts = { connectionId: conn.id, action, reason, ...(error !== undefined && { code: error.code }) };
    // The first bytes, so that an operator can tell what was there.
    const firstBytes = head.subarray(0, 16).toString('hex');
    if (action === 'block') logger.warn({ ...facts, firstBytes }, 'unrecognised');
    else logger.info({ ...facts, firstBytes }, 'unrecognised');
    reporter.emit({ type: 'unrecognised', ...facts });
    switch (action) {
      case 'relay':
        reporter.emit({ type: 'opaque', connectionId: conn.id, protocol: 'unrecognised' });
        return { kind: 'splice', head };
      case 'block':
        // A TLS peer understands an alert; anything else just gets the close.
        return { kind: 'close', alert: looksLikeTls(head) && conn.socket.writable ? ALERT.decodeError : undefined };
    }
  }

  function onHello(conn: AcceptedConnection, hello: ClientHello, bytes: Buffer): Route {
    metrics.connections.inc({ kind: 'tls' });
    const sniAnomaly = hello.serverNameAnomaly;
    const sni = hello.serverName;
    // JA3 and JA4 (an MD5 and two SHA-256 over joined lists) are computed on the first read,
    // once: by a policy rule that names one, or by whoever reads the handshake (its log
    // line, a handshakes$ subscriber). A policy on SNI with nobody reading pays nothing.
    const fingerprint = lazyFingerprints(hello);
    const ech = hello.ech !== undefined;
    const facts: HandshakeFacts = {
      sni,
      sniAnomaly,
      alpn: hello.alpn,
      get ja3() {
        return fingerprint().ja3.hash;
      },
      get ja4() {
        return fingerprint().ja4;
      },
      ech,
    };
    const decision = policy(facts);
    const { action, note } = feasible(decision.action, hello, unbumpable);
    metrics.handshakes.inc({ action });
    const handshake: Handshake = {
      connectionId: conn.id,
      destination: conn.originalDestination,
      redirectedBy: conn.records.redirectedBy,
      sni,
      ...(sniAnomaly !== undefined && { sniAnomaly }),
      alpn: hello.alpn,
      supportedVersions: hello.supportedVersions,
      cipherSuites: hello.cipherSuites,
      // Enumerable getters: a log serializer, JSON.stringify and a spread read them like fields.
      get ja3() {
        return fingerprint().ja3.hash;
      },
      get ja3Text() {
        return fingerprint().ja3.text;
      },
      get ja4() {
        return fingerprint().ja4;
      },
      ech,
      tlsRecordCount: hello.tlsRecordCount,
      action,
      rule: decision.rule,
      ...(note !== undefined && { note }),
    };
    reporter.handshake(handshake);
    switch (action) {
      case 'splice':
        return { kind: 'splice', head: bytes };
      case 'block':
        return { kind: 'close', alert: ALERT.accessDenied };
      case 'bump':
        return { kind: 'bump', hello: bytes, sni };
    }
  }

  return (conn, peeked) => {
    switch (peeked.kind) {
      case 'failed':
        // A TLS stream that stalled (HELLO_TIMEOUT) or a socket error: closed, never relayed,
        // whatever the unrecognised policy: TLS is this proxy's own protocol, and relaying a
        // hello it could not read in time would let a slow client past the policy.
        reporter.fail('hello-rejected', conn.id, errorCodeOf(peeked.error, TlsErrorCode.HelloFailed), (peeked.error as Error).message);
        return { kind: 'close', alert: undefined };
      case 'closed':
        return { kind: 'drop' };
      case 'recognised':
        metrics.connections.inc({ kind: peeked.protocol });
        reporter.emit({ type: 'opaque', connectionId: conn.id, protocol: peeked.protocol });
        logger.debug({ connectionId: conn.id, protocol: peeked.protocol }, 'relayed'); // debug: once per HTTP connection in a chain
        return { kind: 'splice', head: peeked.head };
      case 'unrecognised':
        return onUnrecognised(conn, peeked);
      case 'tls':
        return onHello(conn, peeked.hello, peeked.bytes);
    }
  };
}

/** The hello's JA3 and JA4, computed on the first call and kept. */
function lazyFingerprints(hello: ClientHello): () => { readonly ja3: { readonly text: string; readonly hash: string }; readonly ja4: string } {
  let computed: { readonly ja3: { readonly text: string; readonly hash: string }; readonly ja4: string } | undefined;
  return () => (computed ??= { ja3: ja3(hello), ja4: ja4(hello) });
}

/**
 * The action the policy chose, or what `unbumpable` makes of a bump that cannot be done.
 * Never silently a splice: that would let any client opt out of inspection by its ALPN
 * list. The note says what happened and why.
 *
 * An encrypted_client_hello extension is no reason not to bump: it is GREASE in every
 * Chromium hello for a name without an ECH config, and GREASE is built to look like real
 * ECH. Bump answers on the outer name (`sni`). For a client that did encrypt its inner
 * hello, a completed handshake with a certificate for the outer (public) name and no
 * retry configs is an authenticated ECH rejection (draft-ietf-tls-esni, "Handling ECH
 * rejection"): the client must not send its inner request on it, and may retry without
 * ECH, its real name then in the clear for the policy. Operators who want ECH hellos left
 * alone say so in the policy (`"ech": true`).
 */
function feasible(action: Action, hello: ClientHello, unbumpable: UnbumpableAction): { action: Action; note: string | undefined } {
  if (action !== 'bump') return { action, note: undefined };
  const outcome = `${unbumpable === 'block' ? 'blocked' : 'spliced'} (unbumpable: ${unbumpable})`;
  if (hello.alpn.length > 0 && !hello.alpn.some((protocol) => (BUMP_PROTOCOLS as readonly string[]).includes(protocol))) {
    return { action: unbumpable, note: `bump speaks ALPN ${BUMP_PROTOCOLS.join(' or ')}, the client offered only ${hello.alpn.join(', ')}: ${outcome}` };
  }
  return { action, note: undefined };
}
