/** TLS alert descriptions (RFC 8446 §6) this proxy sends. */
export const ALERT = { handshakeFailure: 40, badCertificate: 42, accessDenied: 49, decodeError: 50, internalError: 80 } as const;

/** One of the alert descriptions in `ALERT`. */
export type AlertDescription = (typeof ALERT)[keyof typeof ALERT];

/** A fatal alert as one TLS record, sent in the clear before any key exchange. */
export function tlsAlertRecord(description: number): Buffer {
  return Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]);
}

/**
 * @deprecated Use `tlsAlertRecord`: "record" in coproxy names redirect records; this is a
 * TLS record. Kept because 0.1 exported it.
 */
export const alertRecord = tlsAlertRecord;

/** A TLS peer would read an alert: a handshake TLS record with a 3.x version. */
export const looksLikeTls = (head: Buffer): boolean => head.length >= 2 && head[0] === 0x16 && head[1] === 0x03;
