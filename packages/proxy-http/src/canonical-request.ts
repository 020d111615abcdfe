import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import { HttpProxyError, ProxyErrorCode } from './errors.js';

/**
 * One canonical view of a request head, for the rules and for forwarding alike (issue
 * #14: "a vendor forwards only what it inspected, and its rules evaluate what the origin
 * will act on").
 *
 * - **Host** (RFC 9112 §3.2): exactly one on HTTP/1.1, and a valid `host[:port]`; else
 *   400. Matched lower-cased, without a trailing dot, IPv6 compressed; forwarded in that
 *   same canonical form, so the origin is handed the name the rules matched.
 * - **Request target** (RFC 9112 §3.2.1–3.2.4): origin-form for every method; absolute-form
 *   `http://authority/path` is matched on its authority, which replaces the Host header,
 *   and forwarded in origin-form (§3.2.2). Any other scheme in absolute-form is a 400: this
 *   port speaks plain HTTP, and an `https://` target asks for a connection it is not
 *   getting, which origins resolve differently. asterisk-form only with OPTIONS;
 *   authority-form only with CONNECT (which the proxy answers 501 anyway). No fragment.
 * - **Path**: matched under every reading an origin could give it (see `pathReadings`);
 *   forwarded as it was sent. A `%` that starts no `%XX` escape, and an encoded NUL, are
 *   400s: origins disagree on both (nginx refuses them, Node passes them on, C code
 *   truncates at the NUL).
 */

/** Why a request head was refused (always 400). Stable literals: events and metrics carry them. */
export const RequestViewCode = {
  /** An HTTP/1.1 request without a Host header. */
  HostMissing: ProxyErrorCode.HostMissing,
  /** More than one Host header line: which one would the origin use? */
  HostDuplicate: ProxyErrorCode.HostDuplicate,
  /** A Host that is no `host[:port]` (a path, user information, a bad port, an escape…). */
  HostInvalid: ProxyErrorCode.HostInvalid,
  /** A request target that is not origin-form, `http://` absolute-form, `*` with OPTIONS, or that has a fragment, a broken or NUL escape. */
  TargetInvalid: ProxyErrorCode.TargetInvalid,
} as const;
export type RequestViewCode = (typeof RequestViewCode)[keyof typeof RequestViewCode];

/** A request head the proxy refuses to forward because origins could read it otherwise than the rules would. */
export class RequestViewError extends HttpProxyError<RequestViewCode> {
  override readonly name = 'RequestViewError';
  readonly status = 400;
}

/** Which of RFC 9112's four request-target forms the client used. */
export type TargetForm = 'origin' | 'absolute' | 'authority' | 'asterisk';

/** A host and port in canonical form. */
export interface CanonicalAuthority {
  /** Lower case, no trailing dot; an IPv6 address compressed and without brackets; `''` for an empty Host. */
  readonly host: string;
  readonly port: number | undefined;
  /** `host[:port]` as forwarded in Host (IPv6 in brackets). */
  readonly authority: string;
}

/** What `canonicalRequest` reads from a parsed head. */
export interface RequestHead {
  readonly method: string;
  readonly url: string;
  readonly versionMajor: number;
  readonly versionMinor: number;
  readonly rawHeaders: string[];
}

/** The request as the rules see it and as it is forwarded. */
export interface CanonicalRequest {
  readonly form: TargetForm;
  /** The request-target sent upstream: origin-form (the client's bytes of path and query), or `*`. */
  readonly target: string;
  readonly host: string | undefined;
  readonly port: number | undefined;
  /** The Host forwarded, canonical (`''` for an HTTP/1.0 request that had none). */
  readonly authority: string;
  /** The path in canonical form (RFC 3986 normalisation): `paths[0]`. */
  readonly path: string;
  /** Every reading of the path an origin could act on, canonical, the standard one first. */
  readonly paths: readonly string[];
  /** The query, without `?`; never part of a path match. */
  readonly query: string | undefined;
  /** Header pairs to forward: the client's, Host in canonical form. */
  readonly rawHeaders: string[];
  /** `rawHeaders` as `IncomingHttpHeaders`. */
  readonly headers: IncomingHttpHeaders;
  /** Set when the head must not be forwarded: the other fields are then a best effort, for the exchange log. */
  readonly rejection: RequestViewError | undefined;
}

/**
 * The canonical view of a parsed request head. `headers` is `headersObject(head.rawHeaders)`,
 * already computed by the caller; it is reused when nothing changes (the common case).
 */
export function canonicalRequest(head: RequestHead, headers: IncomingHttpHeaders): CanonicalRequest {
  let hostIndex = -1;
  let duplicate = false;
  const raw = head.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') {
      if (hostIndex >= 0) duplicate = true;
      hostIndex = i;
    }
  }
  const fallback = (rejection: RequestViewError): CanonicalRequest => {
    const query = head.url.indexOf('?');
    const path = query < 0 ? head.url : head.url.slice(0, query);
    return { form: 'origin', target: head.url, host: undefined, port: undefined, authority: '', path, paths: [path], query: undefined, rawHeaders: raw, headers, rejection };
  };
  if (duplicate) return fallback(new RequestViewError(RequestViewCode.HostDuplicate, 'more than one Host header'));
  const hostValue = hostIndex < 0 ? undefined : raw[hostIndex + 1]!;
  const http11 = head.versionMajor > 1 || (head.versionMajor === 1 && head.versionMinor >= 1);
  if (hostValue === undefined && http11) return fallback(new RequestViewError(RequestViewCode.HostMissing, 'an HTTP/1.1 request without Host'));
  const fromHeader = hostValue === undefined ? undefined : canonicalAuthority(hostValue);
  if (fromHeader === undefined && hostValue !== undefined) return fallback(new RequestViewError(RequestViewCode.HostInvalid, `invalid Host ${JSON.stringify(hostValue)}`));

  const target = parseTarget(head.method, head.url);
  if (target instanceof RequestViewError) return fallback(target);
  // RFC 9112 §3.2.2: the target's authority wins over Host, and replaces it. An HTTP/1.0
  // request without either goes on (as HTTP/1.1) with an empty Host, as §3.2 asks of a
  // target without authority: the origin picks its default, which is what the rules saw.
  const authority = target.authority ?? fromHeader ?? NO_AUTHORITY;
  let forwardRaw = raw;
  let forwardHeaders = headers;
  if (authority.authority !== hostValue && target.form !== 'authority') {
    forwardRaw = raw.slice();
    if (hostIndex >= 0) forwardRaw[hostIndex + 1] = authority.authority;
    else forwardRaw.push('Host', authority.authority);
    forwardHeaders = { ...headers, host: authority.authority };
  }
  return {
    form: target.form,
    target: target.target,
    host: authority.host === '' ? undefined : authority.host,
    port: authority.port,
    authority: authority.authority,
    path: target.paths[0]!,
    paths: target.paths,
    query: target.query,
    rawHeaders: forwardRaw,
    headers: forwardHeaders,
    rejection: undefined,
  };
}

interface ParsedTarget {
  readonly form: TargetForm;
  readonly target: string;
  readonly authority: CanonicalAuthority | undefined;
  readonly paths: readonly string[];
  readonly query: string | undefined;
}

const ABSOLUTE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)(.*)$/s;

function parseTarget(method: string, url: string): ParsedTarget | RequestViewError {
  const invalid = (why: string): RequestViewError => new RequestViewError(RequestViewCode.TargetInvalid, `${why}: ${JSON.stringify(url.slice(0, 200))}`);
  if (method === 'CONNECT') {
    // Never forwarded (501): kept for the exchange log as it came.
    return { form: 'authority', target: url, authority: canonicalAuthority(url), paths: [''], query: undefined };
  }
  if (url === '*') {
    if (method !== 'OPTIONS') return invalid('the asterisk-form target is for OPTIONS only');
    // An application that reads it with WHATWG's URL sees the path `/*`.
    return { form: 'asterisk', target: url, authority: undefined, paths: ['*', '/*'], query: undefined };
  }
  let form: TargetForm = 'origin';
  let authority: CanonicalAuthority | undefined;
  let rest = url;
  if (url.charCodeAt(0) !== 0x2f) {
    const absolute = ABSOLUTE.exec(url);
    if (absolute === null) return invalid('a target that is neither origin-form nor absolute-form');
    const scheme = absolute[1]!.toLowerCase();
    if (scheme !== 'http') return invalid(`absolute-form ${scheme}:// on a plain-HTTP port`);
    if (absolute[2]!.includes('@')) return invalid('user information in the target');
    authority = canonicalAuthority(absolute[2]!);
    if (authority === undefined || authority.host === '') return invalid('an absolute-form target without a valid host');
    form = 'absolute';
    rest = absolute[3]!;
    if (rest === '' || rest.charCodeAt(0) === 0x3f) rest = `/${rest}`;
    else if (rest.charCodeAt(0) !== 0x2f) return invalid('an absolute-form target whose path does not start with /');
  }
  if (rest.includes('#')) return invalid('a fragment in the target');
  const mark = rest.indexOf('?');
  const path = mark < 0 ? rest : rest.slice(0, mark);
  const paths = pathReadings(path);
  if (paths === undefined) return invalid('a broken or NUL percent-escape in the path');
  return { form, target: rest, authority, paths, query: mark < 0 ? undefined : rest.slice(mark + 1) };
}

// ---------------------------------------------------------------------------------------
// Hosts

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
  const host = ipv6 ? compressIPv6(hostPart) : stripTrailingDot(hostPart.toLowerCase());
  const shown = ipv6 ? `[${host}]` : host;
  return { host, port, authority: port === undefined ? shown : `${shown}:${port}` };
}

const NO_AUTHORITY: CanonicalAuthority = Object.freeze({ host: '', port: undefined, authority: '' });

const stripTrailingDot = (host: string): string => (host.endsWith('.') ? host.slice(0, -1) : host);

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

// ---------------------------------------------------------------------------------------
// Paths

/**
 * How one origin could read a path. `decodeAll`: every `%XX` decoded before the path is
 * split (nginx's `$uri`, and applications that decode first, so `%2F` separates);
 * otherwise only unreserved characters are (RFC 3986 §6.2.2.2: WHATWG URL, Node apps,
 * most routers). `backslash`: `\` separates like `/` (WHATWG URL, Windows servers).
 * `params`: `;…` is cut from each segment before dot-segments go (Java servlet
 * containers: `/..;/admin`).
 */
interface Reading {
  readonly decodeAll: boolean;
  readonly backslash: boolean;
  readonly params: boolean;
}

const READINGS: readonly Reading[] = [
  { decodeAll: false, backslash: false, params: false },
  { decodeAll: false, backslash: true, params: false },
  { decodeAll: true, backslash: false, params: false },
  { decodeAll: true, backslash: true, params: false },
  { decodeAll: false, backslash: false, params: true },
  { decodeAll: false, backslash: true, params: true },
  { decodeAll: true, backslash: false, params: true },
  { decodeAll: true, backslash: true, params: true },
];

/** Bytes that stand for themselves in a canonical path (unreserved, sub-delims, ':', '@'); every other byte is `%XX`. */
const LITERAL = new Uint8Array(256);
for (const c of "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@") LITERAL[c.charCodeAt(0)] = 1;
const UNRESERVED = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~') UNRESERVED[c.charCodeAt(0)] = 1;
const HEX = '0123456789ABCDEF';
const SLASH = 0x2f;
const DOT = 0x2e;
const BACKSLASH = 0x5c;
const SEMICOLON = 0x3b;
const PERCENT = 0x25;

/**
 * Every reading of `path` (origin-form, starting with `/`, no query) an origin could act
 * on, each in canonical form: unreserved escapes decoded, other bytes escaped as `%XX`
 * (upper case), dot-segments removed (RFC 3986 §5.2.4), repeated slashes collapsed. The
 * first is the standard reading (RFC 3986 normalisation); the others differ where the path
 * holds an encoded `/`, a backslash or a `;`. Undefined for a path origins disagree on
 * outright: a `%` that starts no escape, or an encoded NUL.
 *
 * A plain path (no `%`, `\`, `;`, no `/.` or `//`, only characters that need no escape)
 * is its own only reading, returned without copying.
 */
export function pathReadings(path: string): readonly string[] | undefined {
  return isPlain(path) ? [path] : slowPathReadings(path);
}

function isPlain(path: string): boolean {
  let previous = 0;
  for (let i = 0; i < path.length; i++) {
    const c = path.charCodeAt(i);
    if (c > 0x7e || LITERAL[c] !== 1) {
      if (c !== SLASH || previous === SLASH) return false;
    } else if (c === SEMICOLON || (c === DOT && previous === SLASH)) {
      return false;
    }
    previous = c;
  }
  return path.length > 0;
}

/** One byte of a path and whether the client sent it as an escape. */
interface Unit {
  readonly byte: number;
  readonly escaped: boolean;
}

/** `pathReadings` without its fast path: exported for the tests that prove the two agree. */
export function slowPathReadings(path: string): readonly string[] | undefined {
  const units = tokenise(path);
  if (units === undefined) return undefined;
  let anyEscaped = false;
  let anyBackslash = false;
  let anySemicolon = false;
  for (const unit of units) {
    if (unit.escaped) anyEscaped = true;
    if (unit.byte === BACKSLASH) anyBackslash = true;
    if (unit.byte === SEMICOLON) anySemicolon = true;
  }
  const out = new Set<string>();
  for (const reading of READINGS) {
    // Readings that cannot differ from one already taken are skipped.
    if ((reading.decodeAll && !anyEscaped) || (reading.backslash && !anyBackslash) || (reading.params && !anySemicolon)) continue;
    out.add(read(units, reading, false));
    // nginx merges slashes before it resolves dot-segments: `/a//..` is `/` to it, `/a/` to RFC 3986 and WHATWG.
    out.add(read(units, reading, true));
  }
  // `new URL(req.url, base)`, common in Node applications, takes a target that starts with
  // two slashes (or backslashes) for a scheme-relative reference: the first segment becomes
  // the host, the rest the path. `//evil/admin/x` is `/admin/x` to such an application.
  const rest = schemeRelativeRest(units);
  if (rest !== undefined) {
    out.add(read(rest, READINGS[0]!, false));
    if (anyBackslash) out.add(read(rest, READINGS[1]!, false));
  }
  return [...out];
}

const isSeparator = (unit: Unit): boolean => !unit.escaped && (unit.byte === SLASH || unit.byte === BACKSLASH);

/** After `//host`, what WHATWG's URL parser keeps as the path (`/` when nothing), or undefined when the path does not start so. */
function schemeRelativeRest(units: readonly Unit[]): Unit[] | undefined {
  if (units.length < 2 || !isSeparator(units[0]!) || !isSeparator(units[1]!)) return undefined;
  let i = 2;
  while (i < units.length && isSeparator(units[i]!)) i++; // special schemes skip any further slashes
  while (i < units.length && !isSeparator(units[i]!)) i++; // the authority
  return i < units.length ? units.slice(i) : [{ byte: SLASH, escaped: false }];
}

function tokenise(path: string): Unit[] | undefined {
  const bytes = Buffer.from(path, 'latin1');
  const units: Unit[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (byte !== PERCENT) {
      units.push({ byte, escaped: false });
      continue;
    }
    const high = hexValue(bytes[i + 1]);
    const low = hexValue(bytes[i + 2]);
    if (high < 0 || low < 0) return undefined;
    const decoded = high * 16 + low;
    if (decoded === 0) return undefined;
    // RFC 3986 §6.2.2.2: an escaped unreserved character is that character.
    units.push({ byte: decoded, escaped: UNRESERVED[decoded] !== 1 });
    i += 2;
  }
  return units;
}

function hexValue(byte: number | undefined): number {
  if (byte === undefined) return -1;
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x37;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x57;
  return -1;
}

/**
 * One reading, in canonical form. `mergeFirst`: empty segments go before dot-segments are
 * resolved (nginx's merge_slashes), rather than after (RFC 3986 §5.2.4, WHATWG), so a
 * `..` after `//` removes a named segment rather than the empty one.
 */
function read(units: readonly Unit[], reading: Reading, mergeFirst: boolean): string {
  // Split into segments; in each, a unit is kept with whether it is still escaped in this reading.
  const segments: Unit[][] = [];
  let segment: Unit[] | undefined;
  for (const unit of units) {
    const literal = !unit.escaped || reading.decodeAll;
    const separator = literal && (unit.byte === SLASH || (reading.backslash && unit.byte === BACKSLASH));
    if (separator) {
      if (segment !== undefined) segments.push(segment);
      segment = [];
    } else {
      (segment ??= []).push(literal ? { byte: unit.byte, escaped: false } : unit);
    }
  }
  if (segment !== undefined) segments.push(segment);
  // RFC 3986 §5.2.4; then empty segments (repeated slashes) are dropped, except a trailing one.
  const out: Unit[][] = [];
  for (let i = 0; i < segments.length; i++) {
    let current = segments[i]!;
    const last = i === segments.length - 1;
    if (reading.params) {
      const cut = current.findIndex((u) => u.byte === SEMICOLON && !u.escaped);
      if (cut >= 0) current = current.slice(0, cut);
    }
    if (current.length === 0 && mergeFirst && !last) continue;
    const dots = current.length <= 2 && current.length > 0 && current.every((u) => u.byte === DOT) ? current.length : 0;
    if (dots === 2) out.pop();
    if (dots > 0) {
      if (last) out.push([]);
      continue;
    }
    out.push(current);
  }
  let text = '';
  for (let i = 0; i < out.length; i++) {
    if (out[i]!.length === 0 && i < out.length - 1) continue;
    text += `/${encode(out[i]!)}`;
  }
  return text === '' ? '/' : text;
}

/** `keepSlash`: an unescaped '/' stays one (a pattern's separators; a path's segments hold none). */
function encode(units: readonly Unit[], keepSlash = false): string {
  let text = '';
  for (const { byte, escaped } of units) {
    const literal = !escaped && (LITERAL[byte] === 1 || (keepSlash && byte === SLASH));
    text += literal ? String.fromCharCode(byte) : `%${HEX[byte >> 4]}${HEX[byte & 15]}`;
  }
  return text;
}

/**
 * A rule's path pattern in the canonical encoding paths are matched in: unreserved escapes
 * decoded, other escapes in upper case, characters that need one escaped (UTF-8 for
 * non-ASCII). `*` stays a wildcard; dot-segments are left alone. Undefined when a `%`
 * starts no escape.
 */
export function canonicalPathPattern(pattern: string): string | undefined {
  const pieces = pattern.split('*').map((piece) => {
    const units = tokenise(Buffer.from(piece, 'utf8').toString('latin1'));
    return units === undefined ? undefined : encode(units, true);
  });
  return pieces.includes(undefined) ? undefined : pieces.join('*');
}
