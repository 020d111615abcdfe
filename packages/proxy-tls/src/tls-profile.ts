import type tls from 'node:tls';

/**
 * The TLS that bump's server side offers clients, after Mozilla's "intermediate" server
 * profile (ssl-config.mozilla.org, guidelines 5.7): TLS 1.2 and 1.3 only; in TLS 1.2 only
 * forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305: no CBC, so no
 * SHA-1 or SHA-2 MACs in the record layer); groups X25519, P-256, P-384.
 *
 * Where it differs from Mozilla's, on purpose:
 * - No DHE suites: Mozilla lists three with a 2048-bit group for old clients; every client
 *   that negotiates TLS 1.2 today has ECDHE, and a DHE suite would want its own parameters.
 * - The server's cipher order decides (`honorCipherOrder`), where Mozilla lets the client
 *   choose among suites that are all strong: with the order below, AES-128-GCM first, the
 *   choice is predictable whatever a client lists first.
 * - Sessions and tickets last one hour (Node's default is five minutes; Mozilla sets a day,
 *   and turns tickets off in servers that never rotate the ticket key). Node never rotates
 *   the ticket key of a secure context, so an hour bounds what one ticket key protects
 *   without losing resumption for a browsing session.
 *
 * The bumped leaves are ECDSA P-256 (ca.ts), so of the TLS 1.2 suites only the ECDSA ones
 * are ever chosen; the RSA ones are listed as Mozilla lists them, for a CA with RSA keys.
 */
const BUMP_TLS13_SUITES = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256'] as const;

const BUMP_TLS12_SUITES = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
] as const;

/** OpenSSL's names for X25519, P-256 and P-384, in the server's order of preference. */
const BUMP_GROUPS = ['X25519', 'prime256v1', 'secp384r1'] as const;

/** Session (and ticket) lifetime, in seconds. */
const BUMP_SESSION_SECONDS = 3600;

/** The options every secure context of bump's server side is made with (with its key and certificate). */
export const BUMP_SERVER_PROFILE = {
  minVersion: 'TLSv1.2',
  // Node splits one list: TLS 1.3 suite names go to SSL_CTX_set_ciphersuites, the rest to the 1.2 list.
  ciphers: [...BUMP_TLS13_SUITES, ...BUMP_TLS12_SUITES].join(':'),
  honorCipherOrder: true,
  ecdhCurve: BUMP_GROUPS.join(':'),
  sessionTimeout: BUMP_SESSION_SECONDS,
} as const satisfies tls.SecureContextOptions;
