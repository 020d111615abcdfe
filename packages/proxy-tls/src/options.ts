import type { Inspector, VendorRedirectorOptions } from '@coproxy/core/vendor';
import type { Logger } from 'pino';
import type { CertificateAuthority } from './ca.js';
import type { UnbumpableAction, UnrecognisedAction } from './events.js';
import type { PeekSettings } from './hello-peek.js';
import type { PolicyFile } from './policy.js';

/**
 * The redirector's options (`match` default: TCP/443 and, for QUIC, UDP/443; TCP/443 only on
 * WFP, which redirects no UDP), then the proxy's.
 */
export interface TlsProxyOptions extends VendorRedirectorOptions {
  /** A policy file's content or path; without one every handshake is spliced. */
  readonly policy?: PolicyFile | string;
  /** Bump mode: the CA directory (created on first use) or an opened CA. Required for `bump`. */
  readonly ca?: { readonly dir: string } | CertificateAuthority;
  /** Bump mode: PEM bundle to verify origins with, instead of Node's system store. */
  readonly originCa?: string | Buffer;
  /**
   * Bump mode: inspectors run on every decrypted request, each HTTP/1.1 request and each
   * HTTP/2 stream, in order: the contract of `@coproxy/core/vendor` that coproxy-http runs
   * too, so one inspector works on both. A block is answered on that exchange only.
   */
  readonly inspectors?: readonly Inspector[];
  /**
   * What to do with a connection whose first bytes are neither TLS nor a protocol this proxy
   * recognises (HTTP/1.x, the HTTP/2 preface): bytes of another protocol, a stream that
   * starts like TLS but is not a ClientHello, a client silent for `sniffTimeoutMs`.
   * `block` (the default) closes it, after a TLS alert when it started like TLS; `relay`
   * passes it on unchanged, uninspected. Either way: a log line, a metric, an event.
   */
  readonly unrecognised?: UnrecognisedAction;
  /**
   * What a `bump` decision becomes when bump cannot be done: the client offers ALPN but
   * neither `h2` nor `http/1.1` (only `grpc-exp`, say). (An `encrypted_client_hello`
   * extension is not one: bump answers on the outer name; a policy rule on `ech` can splice.)
   * `block` (the default) answers access_denied; `splice` relays the handshake uninspected,
   * the operator's explicit choice. Either way the handshake event's `note` says why.
   */
  readonly unbumpable?: UnbumpableAction;
  /** A client that sends nothing this long (a server-first protocol) is unrecognised. Default 1000 ms. */
  readonly sniffTimeoutMs?: number;
  /** The ClientHello (or another protocol's first line) must be complete within this long. Default 10 000 ms. */
  readonly helloTimeoutMs?: number;
  /** Largest ClientHello accepted. Default 65 536 bytes. */
  readonly maxHelloBytes?: number;
  /** Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /**
   * A bumped connection on which nothing arrives or leaves for this long is closed, with its
   * origin connection: in the TLS handshake, between HTTP/1.1 requests, or an idle h2
   * session. Default 120 000 ms.
   */
  readonly idleTimeoutMs?: number;
  readonly logger?: Logger;
  /**
   * Default true. `false` makes onward connections carry only this proxy's own redirect,
   * as a vendor that merely excludes itself would: for demonstrating the loop redirect
   * records prevent (the testbed's `--drop-records`).
   */
  readonly propagateRecords?: boolean;
  /**
   * Default false. `true` starts the onward connection as soon as a connection is accepted
   * (its original destination is known then), in parallel with reading the ClientHello,
   * which saves the connect's round trip on a spliced flow. No byte goes onward before the
   * policy's decision (I6); a flow that is not spliced (blocked, malformed, silent, bumped,
   * the client gone) closes that connection with nothing written. The price: the origin
   * (or the next vendor) then sees a TCP connection, empty, for every flow this proxy
   * refuses, which it does not see with the default.
   */
  readonly earlyOnward?: boolean;
}

/** The options checked and defaulted, as each concern reads them. */
export interface TlsProxySettings {
  readonly unrecognised: UnrecognisedAction;
  readonly unbumpable: UnbumpableAction;
  readonly peek: PeekSettings;
  readonly connectTimeoutMs: number;
  readonly idleTimeoutMs: number;
}

/** Checks what JavaScript callers may get wrong; throws RangeError naming the option. */
export function resolveSettings(options: TlsProxyOptions): TlsProxySettings {
  const unrecognised = oneOf(options.unrecognised, ['block', 'relay'] as const, 'unrecognised');
  const unbumpable = oneOf(options.unbumpable, ['block', 'splice'] as const, 'unbumpable');
  return {
    unrecognised,
    unbumpable,
    peek: {
      sniffTimeoutMs: positive(options.sniffTimeoutMs, 1000, 'sniffTimeoutMs'),
      helloTimeoutMs: positive(options.helloTimeoutMs, 10_000, 'helloTimeoutMs'),
      maxHelloBytes: positive(options.maxHelloBytes, 65_536, 'maxHelloBytes'),
    },
    connectTimeoutMs: positive(options.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
    idleTimeoutMs: positive(options.idleTimeoutMs, 120_000, 'idleTimeoutMs'),
  };
}

/** A policy option from JavaScript may be any string: the first choice is the default, anything else is refused. */
function oneOf<TValue extends string>(value: TValue | undefined, choices: readonly [TValue, ...TValue[]], name: string): TValue {
  if (value === undefined) return choices[0];
  if (!choices.includes(value)) throw new RangeError(`${name}: one of ${choices.join(', ')}, got ${String(value)}`);
  return value;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  const result = value ?? fallback;
  if (!Number.isInteger(result) || result <= 0) throw new RangeError(`${name}: must be a positive integer, got ${String(result)}`);
  return result;
}
