import net from 'node:net';

/**
 * One reading of a request's host for every vendor (issue #14: "a vendor's rules evaluate
 * what the origin will act on"): a Host header, an absolute-form authority, an h2
 * `:authority`, or a rule's host, in one canonical form. Lower case, no trailing dot, an
 * IPv6 address compressed (RFC 5952) and without brackets; stricter than RFC 3986's
 * reg-name (no percent-escapes, sub-delimiters, user information or empty port), as
 * origins read those differently. coproxy-http and coproxy-tls's bump both read hosts
 * here, so a host rule written once matches the same requests on both.
 */

/** A host and port in canonical form. */
export interface CanonicalAuthority {
  /** Lower case, no trailing dot; an IPv6 address compressed and without brackets; `''` for an empty Host. */
  readonly host: string;
  readonly port: number | undefined;
  /** `host[:port]` as forwarded in Host (IPv6 in brackets). */
  readonly authority: string;
}

/** A reg-name or IPv4 address: dot-separated labels of letters, digits, '-' and '_', one trailing dot allowed. */
const REG_NAME = /^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?$/;
const PORT = /^[0-9]{1,5}$/;
const MAX_HOST = 255;

/** Host values seen lately: a keep-alive connection sends the same one on every request. */
const authorityCache = new Map<string, CanonicalAuthority | null>();
const AUTHORITY_CACHE_SIZE = 512;

/**
 * A Host value or an absolute-form authority in canonical form, or undefined when it is no
 * valid `host[:port]`. Stricter than RFC 3986's reg-name: no percent-escapes, no
 * sub-delimiters, no user information, no empty port, as origins read those differently.
 */
export function canonicalAuthority(value: string): CanonicalAuthority | undefined {
  const cached = authorityCache.get(value);
  if (cached !== undefined) return cached ?? undefined;
  const parsed = parseAuthority(value);
  if (authorityCache.size >= AUTHORITY_CACHE_SIZE) authorityCache.clear();
  authorityCache.set(value, parsed ?? null);
  return parsed;
}

function parseAuthority(value: string): CanonicalAuthority | undefined {
  if (value === '') return { host: '', port: undefined, authority: '' };
  let hostPart: string;
  let portPart: string | undefined;
  let ipv6 = false;
  if (value.charCodeAt(0) === 0x5b) {
    const close = value.indexOf(']');
    if (close < 0) return undefined;
    hostPart = value.slice(1, close);
    const after = value.slice(close + 1);
    if (after !== '' && after.charCodeAt(0) !== 0x3a) return undefined;
    portPart = after === '' ? undefined : after.slice(1);
    // A zone id (fe80::1%25eth0) names an interface of the client's host, nothing an origin can use.
    if (!net.isIPv6(hostPart) || hostPart.includes('%')) return undefined;
    ipv6 = true;
  } else {
    const colon = value.indexOf(':');
    hostPart = colon < 0 ? value : value.slice(0, colon);
    portPart = colon < 0 ? undefined : value.slice(colon + 1);
    if (hostPart.length > MAX_HOST || !REG_NAME.test(hostPart)) return undefined;
  }
  let port: number | undefined;
  if (portPart !== undefined) {
    if (!PORT.test(portPart)) return undefined;
    port = Number(portPart);
    if (port > 65535) return undefined;
  }
  let host = ipv6 ? compressIPv6(hostPart) : stripTrailingDot(hostPart.toLowerCase());
  if (!ipv6 && ENDS_IN_A_NUMBER.test(host)) {
    // An IPv4 address in any of the forms URL parsers, curl and inet_aton take (`127.1`,
    // `0x7f.1`, `2130706433`): read as the dotted quad they stand for, or refused where
    // WHATWG's URL refuses it (`999.1.1.1`), so a rule on 127.0.0.1 sees what the origin sees.
    const ipv4 = wellFormedIPv4(host);
    if (ipv4 === undefined) return undefined;
    host = ipv4;
  }
  const shown = ipv6 ? `[${host}]` : host;
  return { host, port, authority: port === undefined ? shown : `${shown}:${port}` };
}

const stripTrailingDot = (host: string): string => (host.endsWith('.') ? host.slice(0, -1) : host);

/** WHATWG URL's "ends in a number": a last label of decimal digits or `0x` hex makes the host an IPv4 address. */
const ENDS_IN_A_NUMBER = /(?:^|\.)(?:[0-9]+|0x[0-9a-f]*)$/;

/** The dotted quad WHATWG's URL parser reads `host` as (it takes octal, hex and fewer parts), or undefined when it refuses it. */
function wellFormedIPv4(host: string): string | undefined {
  try {
    return new URL(`http://${host}/`).hostname;
  } catch {
    return undefined; // not an IPv4 address to a URL parser either: refused
  }
}

/** RFC 5952's form, as WHATWG's URL serialises it: lower case, longest zero run compressed. */
function compressIPv6(address: string): string {
  const hostname = new URL(`http://[${address}]/`).hostname;
  return hostname.slice(1, -1);
}

/** A rule's host in the form `CanonicalRequest.host` has (`*.` kept), or undefined when it is none. */
export function canonicalRuleHost(pattern: string): string | undefined {
  if (pattern.startsWith('*.')) {
    const rest = canonicalRuleHost(pattern.slice(2));
    return rest === undefined || rest.includes(':') ? undefined : `*.${rest}`;
  }
  const bracketed = pattern.startsWith('[') ? pattern : net.isIPv6(pattern) ? `[${pattern}]` : pattern;
  const parsed = parseAuthority(bracketed);
  if (parsed === undefined || parsed.port !== undefined || parsed.host === '') return undefined;
  return parsed.host;
}
