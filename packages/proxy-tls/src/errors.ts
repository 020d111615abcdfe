import { VendorError, defineErrorCodes } from '@coproxy/core';

/**
 * Every code this package gives its own failures, under the vendor prefix `COPROXY_TLS_`,
 * so that on a host running several vendors a log line, an event or a metric label names
 * one failure only. Errno names (`ECONNRESET`) and OpenSSL codes (`CERT_HAS_EXPIRED`) that
 * come from Node are passed on as they are: they already mean one thing everywhere.
 */
export const TlsErrorCode = defineErrorCodes('COPROXY_TLS', {
  // The ClientHello parser (`ClientHelloError`).
  /** The first byte is not a handshake TLS record: not TLS (the caller may pass it through). */
  NotTls: 'NOT_TLS',
  /** A TLS record or handshake header is invalid: wrong type, version or length. */
  BadRecord: 'BAD_RECORD',
  /** The first handshake message is not a ClientHello. */
  NotClientHello: 'NOT_CLIENT_HELLO',
  /** A length runs past its container, a list is malformed, or bytes are left over. */
  Malformed: 'MALFORMED',
  /** The hello is larger than the configured bound. */
  TooLarge: 'TOO_LARGE',
  /** An extension appears twice (RFC 8446 §4.2 forbids it). */
  DuplicateExtension: 'DUPLICATE_EXTENSION',
  // The QUIC Initial reader (`QuicInitialError`).
  /** The first datagram of a UDP flow is no QUIC long-header Initial (a short header, another packet type, not QUIC). */
  QuicNotInitial: 'QUIC_NOT_INITIAL',
  /** A QUIC version whose Initial keys are not known (v1 and v2 are). */
  QuicUnsupportedVersion: 'QUIC_UNSUPPORTED_VERSION',
  /** A QUIC header, frame or CRYPTO stream is invalid: a length past its container, a frame not allowed in an Initial, a datagram under 1200 bytes. */
  QuicMalformed: 'QUIC_MALFORMED',
  /** An Initial packet does not authenticate with the keys of its Destination Connection ID. */
  QuicDecryptFailed: 'QUIC_DECRYPT_FAILED',
  /** The Initials exceed a bound: CRYPTO data past the hello bound, or too many datagrams before the hello is whole. */
  QuicTooLarge: 'QUIC_TOO_LARGE',
  /** The proxy's QUIC flows awaiting a decision together hold their memory budget: this flow is rejected (the client falls back to TCP), whatever the unrecognised policy. */
  QuicBusy: 'QUIC_BUSY',
  // Reading the first bytes.
  /** A stream that started as TLS was no complete ClientHello within `helloTimeoutMs`. */
  HelloTimeout: 'HELLO_TIMEOUT',
  /** The first bytes could not be read (a failure without a code of its own). */
  HelloFailed: 'HELLO_FAILED',
  // Onward legs.
  /** The onward connection of a splice or relay could not be made. */
  OriginUnreachable: 'ORIGIN_UNREACHABLE',
  /** A relayed leg ended in an error without a code of its own. */
  Reset: 'RESET',
  /** Bump: the origin's TLS connection, or the request to it, failed. */
  OriginFailed: 'ORIGIN_FAILED',
  /** Bump: the TLS handshake with the client failed. */
  ClientTlsFailed: 'CLIENT_TLS_FAILED',
  /** Bump: the decrypted bytes are no HTTP/1.1 request. */
  HttpParse: 'HTTP_PARSE',
  /** Bump: a request names a host (`:authority`, Host) the origin connection's verified certificate does not cover: 421, never forwarded. */
  Misdirected: 'MISDIRECTED',
  /** Bump: the proxy's own code failed while serving one exchange: that exchange got a 502 (or a reset), the process serves on. */
  Internal: 'INTERNAL',
  /** Bump: an inspector threw (or its promise rejected) on one exchange: that exchange got a 502. */
  InspectorFailed: 'INSPECTOR_FAILED',
  /** Bump: an HTTP/2 client reset more streams per second than the bound (CVE-2023-44487): GOAWAY, then close. */
  H2RapidReset: 'H2_RAPID_RESET',
  /** Bump: an HTTP/2 client sent more PING and SETTINGS frames per second than the bound: GOAWAY, then close. */
  H2ControlFlood: 'H2_CONTROL_FLOOD',
  /** Bump: an HTTP/2 session failed (a protocol error, a flood node:http2 refused) without a code of its own. */
  H2SessionFailed: 'H2_SESSION_FAILED',
  // Configuration.
  /** The CA files could not be created, read or used (`CaError`). */
  CaError: 'CA_ERROR',
  /** The policy file is not valid (`PolicyError`). */
  PolicyInvalid: 'POLICY_INVALID',
});

/** One of this package's own error codes. */
export type TlsErrorCode = (typeof TlsErrorCode)[keyof typeof TlsErrorCode];

/**
 * The one error base of the package: `CaError`, `PolicyError` and `ClientHelloError`
 * extend it, and failures without a class of their own (a hello timeout) are one.
 * Branch on `code`, never on the message.
 */
export class TlsProxyError<Code extends TlsErrorCode = TlsErrorCode> extends VendorError<Code> {
  override readonly name: string = 'TlsProxyError';
}
