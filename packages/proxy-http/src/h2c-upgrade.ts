import type { IncomingHttpHeaders } from 'node:http';
import type { MessageHead } from './node-http-parser.js';

/**
 * `Upgrade: h2c` (RFC 7540 §3.2) is refused safely rather than carried out: the request
 * goes to the origin as plain HTTP/1.1, without `Upgrade` and `HTTP2-Settings`, so the
 * origin never switches protocols and no HTTP/2 can follow it past the inspection (the
 * tunnel an accepted upgrade opens is inspected only at its handshake). RFC 9113 §3.1
 * deprecates the token ("the h2c upgrade token ... is deprecated"); clients that want
 * cleartext HTTP/2 use prior knowledge, which the proxy inspects per stream
 * (h2c-session.ts). An origin that answers 101 anyway is answered 502 (an unasked upgrade).
 */

/** Whether an `Upgrade` header offers h2c, alone or among other protocols. */
export function offersH2c(headers: IncomingHttpHeaders): boolean {
  const upgrade = headers.upgrade;
  if (upgrade === undefined) return false;
  return upgrade.split(',').some((token) => token.trim().split('/')[0]!.toLowerCase() === 'h2c');
}

/**
 * The head without its upgrade: no `Upgrade` or `HTTP2-Settings` field (in `rawHeaders`
 * and in `headers`, which is changed in place), not an upgrade, and the connection not kept
 * (the parser took what follows the head as the other protocol's: it is never read).
 */
export function withoutH2cUpgrade(head: MessageHead, headers: IncomingHttpHeaders): MessageHead {
  const rawHeaders: string[] = [];
  for (let i = 0; i < head.rawHeaders.length; i += 2) {
    const name = head.rawHeaders[i]!.toLowerCase();
    if (name === 'upgrade' || name === 'http2-settings') continue;
    rawHeaders.push(head.rawHeaders[i]!, head.rawHeaders[i + 1]!);
  }
  delete headers.upgrade;
  delete headers['http2-settings'];
  return { ...head, rawHeaders, upgrade: false, keepAlive: false };
}
