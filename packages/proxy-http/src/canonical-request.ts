import type { IncomingHttpHeaders } from 'node:http';
import { type CanonicalAuthority, canonicalAuthority, pathReadings } from '@coproxy/core/vendor';
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
// Hosts: read in core's vendor kit, shared with every vendor (`canonicalAuthority`).
export { canonicalAuthority, canonicalRuleHost } from '@coproxy/core/vendor';
export type { CanonicalAuthority } from '@coproxy/core/vendor';

const NO_AUTHORITY: CanonicalAuthority = Object.freeze({ host: '', port: undefined, authority: '' });

// ---------------------------------------------------------------------------------------
// Paths: the readings live in core's vendor kit, shared with every vendor (RequestInfo.paths).
export { pathReadings, slowPathReadings, canonicalPathPattern } from '@coproxy/core/vendor';
