/**
 * The HTTP inspection contract every vendor that decrypts or reads HTTP shares
 * (coproxy-http on cleartext HTTP/1.1 and h2c, coproxy-tls inside a bump, h1 and h2
 * alike): an inspector written once runs on both. Types and `decide` only: how each
 * vendor builds a `RequestInfo` and answers a block is its own.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Endpoint } from '../model/flow.js';
import type { Destination } from '../model/match-rule.js';

/** What an inspector decides about one request. */
export type Verdict =
  | { readonly action: 'allow' }
  | {
      readonly action: 'block';
      /** Sent to the client; default 403. */
      readonly status?: number;
      /** The response body, as text; default the status's standard phrase. */
      readonly reason?: string;
    }
  | {
      readonly action: 'annotate';
      /** Added to the request sent upstream (replacing a header of the same name). */
      readonly headers: Readonly<Record<string, string>>;
    };

/** The connection a request arrived on, as core reported it. */
export interface ConnectionInfo {
  /** core's connection id, `<redirector id>#<n>`. */
  readonly id: string;
  readonly source: Endpoint;
  readonly destination: Destination;
  /** The flow's records, this proxy's redirect last. */
  readonly redirectedBy: readonly string[];
}

/**
 * A request head, before its body is forwarded, in the canonical view the origin is sent
 * (see the README, "One view for rules and origin"): what an inspector decides on is what
 * the origin acts on.
 */
export interface RequestInfo {
  readonly method: string;
  /** The request target as the client sent it (origin-form `/path?query`, absolute-form `http://host/path`, `*`). */
  readonly url: string;
  /** The request target forwarded: origin-form (the client's bytes of path and query), or `*`. */
  readonly target: string;
  /**
   * The path without the query, in canonical form: unreserved escapes decoded, other
   * escapes upper-case, dot-segments removed, repeated slashes collapsed (`/%61dmin//x/.`
   * is `/admin/x/`). `paths[0]`.
   */
  readonly path: string;
  /**
   * Every reading of the path an origin could act on, canonical, `path` first: also with
   * every escape decoded before splitting (`/a%2Fb` as `/a/b`), backslashes as slashes,
   * and `;` parameters cut from each segment. An inspector that blocks by path should
   * block when any of them matches, as the rule file does.
   */
  readonly paths: readonly string[];
  /**
   * The host the request is for, lower case, without port or trailing dot (an IPv6
   * address compressed, without brackets): an absolute-form target's, else the Host
   * header's; undefined when there is neither (HTTP/1.0) or Host is empty.
   */
  readonly host: string | undefined;
  /** The port named with the host, if any. */
  readonly port: number | undefined;
  /** The Host sent to the origin, `host[:port]` in canonical form (IPv6 in brackets). */
  readonly authority: string | undefined;
  readonly httpVersion: string;
  /** Lower-cased names, as Node parses them; `host` is the one forwarded. */
  readonly headers: IncomingHttpHeaders;
  readonly connection: ConnectionInfo;
  /** True for an `Upgrade` request (a WebSocket handshake). */
  readonly upgrade: boolean;
}

export interface ResponseInfo {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
}

/**
 * Custom inspection code. `inspectRequest` runs on each request head, after the rule
 * file's rules, and may return a verdict (nothing means allow); `inspectResponse` sees
 * each response head from the origin. Both may be async; a throw is an error for that
 * exchange only (502 to the client, an `inspector-failed` event), never for the proxy.
 *
 * @example
 * ```ts
 * const noTrackers: Inspector = {
 *   name: 'no-trackers',
 *   inspectRequest: (req) => (req.host?.endsWith('.tracker.example') ? { action: 'block', status: 451 } : undefined),
 * };
 * ```
 */
export interface Inspector {
  readonly name: string;
  inspectRequest?(request: RequestInfo): Verdict | undefined | Promise<Verdict | undefined>;
  inspectResponse?(request: RequestInfo, response: ResponseInfo): void | Promise<void>;
}

/** The verdict an exchange got, and who gave it (a rule's name or an inspector's). */
export type Decision =
  | { readonly action: 'allow'; readonly by: readonly string[] }
  | { readonly action: 'block'; readonly status: number; readonly reason: string; readonly by: readonly string[] }
  | { readonly action: 'annotate'; readonly headers: Readonly<Record<string, string>>; readonly by: readonly string[] };

/**
 * Runs the inspectors in order. A block ends the evaluation; annotations accumulate (a
 * later inspector's header of the same name wins); otherwise the request is allowed.
 */
export async function decide(inspectors: readonly Inspector[], request: RequestInfo): Promise<Decision> {
  let headers: Record<string, string> | undefined;
  const by: string[] = [];
  for (const inspector of inspectors) {
    const verdict = await inspector.inspectRequest?.(request);
    if (verdict === undefined) continue;
    // The rule file's inspector names the rule that decided.
    const who = 'rule' in verdict && typeof verdict.rule === 'string' ? `rule:${verdict.rule}` : inspector.name;
    if (verdict.action === 'allow') {
      if ('rule' in verdict) by.push(who);
      continue;
    }
    by.push(who);
    if (verdict.action === 'block') {
      const status = verdict.status ?? 403;
      return { action: 'block', status, reason: verdict.reason ?? defaultReason(status), by };
    }
    headers = { ...headers, ...lowerCaseKeys(verdict.headers) };
  }
  return headers === undefined ? { action: 'allow', by } : { action: 'annotate', headers, by };
}

function lowerCaseKeys(headers: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
}

function defaultReason(status: number): string {
  return `${status} blocked by policy`;
}
