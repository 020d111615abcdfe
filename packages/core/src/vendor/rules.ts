import fs from 'node:fs';
import { z } from 'zod';
import { canonicalRuleHost } from './authority.js';
import type { Inspector, RequestInfo, Verdict } from './http-inspection.js';
import { canonicalPathPattern } from './path-readings.js';
import { VendorError } from './vendor-error.js';

/**
 * The rule file both reference vendors read (`--rules`): coproxy-http on every request,
 * coproxy-tls on every bumped one (HTTP/1.1 or an HTTP/2 stream), so a rule written once
 * works on both. Hosts and paths are read as the kit reads them for `RequestInfo`
 * (`canonicalAuthority`, `pathReadings`).
 *
 * The rule file: an ordered list, the first rule whose `when` matches gives the verdict.
 *
 * ```json
 * {
 *   "rules": [
 *     { "name": "no-admin", "when": { "method": ["POST", "PUT"], "host": "*.example.com", "path": "/admin/*" },
 *       "verdict": "block", "status": 403, "reason": "admin is off limits" },
 *     { "name": "tag-api", "when": { "header": { "name": "x-client", "matches": "^mobile/" } },
 *       "verdict": "annotate", "headers": { "x-inspected-by": "acme-web" } },
 *     { "name": "rest", "verdict": "allow" }
 *   ]
 * }
 * ```
 *
 * `method`: a name or a list (any case). `host`: the request's host without port (an
 * absolute-form target's, else Host's), exactly or `*.suffix` for any subdomain; any case,
 * a trailing dot ignored, IPv6 with or without brackets. `path`: the path without query,
 * in canonical form (`RequestInfo.path`); `*` matches any run of characters and the
 * pattern must match the whole path; a rule matches when it matches any reading of the
 * path (`RequestInfo.paths`), and a block under any reading wins over the verdict the
 * standard reading gets. `header`: `name` plus one of
 * `equals`, `contains`, `matches` (a regular expression) or `present` (true/false). Every
 * condition given must hold; a rule without `when` matches every request.
 */
const headerCondition = z
  .object({
    name: z.string().min(1).regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be an HTTP header name'),
    equals: z.string().optional(),
    contains: z.string().optional(),
    matches: z.string().optional(),
    present: z.boolean().optional(),
  })
  .strict()
  .refine((h) => [h.equals, h.contains, h.matches, h.present].filter((v) => v !== undefined).length === 1, {
    message: 'give exactly one of equals, contains, matches, present',
  })
  .refine((h) => h.matches === undefined || isRegExp(h.matches), { message: 'matches is not a valid regular expression', path: ['matches'] });

const when = z
  .object({
    method: z.union([z.string().regex(/^[A-Za-z]+$/, 'must be a method name'), z.array(z.string().regex(/^[A-Za-z]+$/, 'must be a method name')).min(1)]).optional(),
    host: z
      .string()
      .min(1)
      .refine((host) => canonicalRuleHost(host) !== undefined, "must be a host name or IP address, or '*.' and a domain")
      .optional(),
    path: z
      .string()
      .startsWith('/', "must start with '/'")
      .refine((path) => canonicalPathPattern(path) !== undefined, "'%' must start a %XX escape (not %00)")
      .optional(),
    header: headerCondition.optional(),
  })
  .strict();

const base = { name: z.string().min(1).max(64), when: when.optional() };

const rule = z.discriminatedUnion('verdict', [
  z.object({ ...base, verdict: z.literal('allow') }).strict(),
  z
    .object({
      ...base,
      verdict: z.literal('block'),
      status: z.number().int().min(400).max(599).optional(),
      reason: z.string().max(1024).optional(),
    })
    .strict(),
  z
    .object({
      ...base,
      verdict: z.literal('annotate'),
      headers: z
        .record(z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, 'must be an HTTP header name'), z.string().regex(/^[\t\x20-\x7e\x80-\xff]*$/, 'must not contain control characters'))
        .refine((h) => Object.keys(h).length > 0, { message: 'add at least one header' }),
    })
    .strict(),
]);

const ruleFile = z.object({ rules: z.array(rule) }).strict();

export type Rule = z.infer<typeof rule>;
export type RuleFile = z.infer<typeof ruleFile>;

function isRegExp(source: string): boolean {
  try {
    new RegExp(source);
    return true;
  } catch {
    return false; // the message says which field: see the refine above
  }
}

/** A rule file that cannot be used: every problem, each with its path in the document. */
export class RuleFileError extends VendorError<'COPROXY_RULES_INVALID'> {
  override readonly name = 'RuleFileError';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super('COPROXY_RULES_INVALID', `invalid rules in ${source}:\n  ${problems.join('\n  ')}`);
  }
}

/** How a vendor reports an unusable rule file (its own error class and code); the kit's `RuleFileError` by default. */
export type RuleFileErrorFactory = (source: string, problems: readonly string[]) => Error;

const kitError: RuleFileErrorFactory = (source, problems) => new RuleFileError(source, problems);

/** Validates a parsed rule file; throws (`invalid`'s error) listing every problem with its path. */
export function parseRules(value: unknown, source = 'rules', invalid: RuleFileErrorFactory = kitError): RuleFile {
  const result = ruleFile.safeParse(value);
  if (result.success) return result.data;
  // Paths inside the document (`rules[0].verdict`); the source heads the error's message.
  const problems = result.error.issues.map((issue) => `${documentPath(issue.path)}: ${issue.message}`);
  throw invalid(source, problems);
}

function documentPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(top level)';
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i === 0 ? '' : '.'}${String(p)}`)).join('');
}

/** Reads, parses and validates a rule file. */
export function loadRules(file: string, invalid: RuleFileErrorFactory = kitError): RuleFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw invalid(file, [`cannot read: ${(error as Error).message}`]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw invalid(file, [`not JSON: ${(error as Error).message}`]);
  }
  return parseRules(value, file, invalid);
}

/**
 * The rules as an inspector named `rule:<name>` per verdict: the first match decides. A
 * path an origin could read several ways is evaluated under each reading: if any reading's
 * first match blocks, the request is blocked (an allow rule on `/public/*` must not let
 * `/public/..%2Fadmin` through to an origin that decodes `%2F`); otherwise the standard
 * reading's verdict holds. Each reading is also tried with path patterns matched without
 * regard to case, for origins that route that way (Express's default router, IIS, Windows
 * file systems): `/ADMIN/x` is blocked by a rule on `/admin/*`. Only a block is taken from
 * those readings, so an allow rule never widens by case.
 */
export function rulesInspector(file: RuleFile): Inspector {
  const compiled = file.rules.map((r) => ({ rule: r, test: compileWhen(r.when) }));
  const firstMatch = (request: RequestInfo, path: string, fold: boolean): Rule | undefined => compiled.find(({ test }) => test(request, path, fold))?.rule;
  // Without a path condition the case-folded readings cannot differ: no second pass.
  const folds = file.rules.some((r) => r.when?.path !== undefined);
  return {
    name: 'rules',
    inspectRequest(request) {
      const hit = firstMatch(request, request.path, false);
      if (hit?.verdict !== 'block') {
        for (let i = 0; i < request.paths.length; i++) {
          const other = i === 0 ? undefined : firstMatch(request, request.paths[i]!, false);
          if (other?.verdict === 'block') return toVerdict(other);
          const folded = folds ? firstMatch(request, request.paths[i]!, true) : undefined;
          if (folded?.verdict === 'block') return toVerdict(folded);
        }
      }
      return hit === undefined ? undefined : toVerdict(hit);
    },
  };
}

/** A rule's verdict, with the rule's name where the decision records who decided. */
function toVerdict(r: Rule): Verdict & { readonly rule: string } {
  switch (r.verdict) {
    case 'allow':
      return { action: 'allow', rule: r.name };
    case 'block':
      return { action: 'block', rule: r.name, ...(r.status !== undefined && { status: r.status }), ...(r.reason !== undefined && { reason: r.reason }) };
    case 'annotate':
      return { action: 'annotate', rule: r.name, headers: r.headers };
  }
}

/** A rule's conditions, tested against a request and one reading of its path (`fold`: the path pattern without regard to case). */
function compileWhen(condition: Rule['when']): (request: RequestInfo, path: string, fold: boolean) => boolean {
  if (condition === undefined) return () => true;
  const tests: ((request: RequestInfo, path: string, fold: boolean) => boolean)[] = [];
  if (condition.method !== undefined) {
    const methods = new Set((Array.isArray(condition.method) ? condition.method : [condition.method]).map((m) => m.toUpperCase()));
    tests.push((request) => methods.has(request.method.toUpperCase()));
  }
  if (condition.host !== undefined) {
    // Validated by the schema: both are defined here.
    const host = canonicalRuleHost(condition.host)!;
    tests.push(
      host.startsWith('*.')
        ? (request) => request.host !== undefined && request.host.endsWith(host.slice(1))
        : (request) => request.host === host,
    );
  }
  if (condition.path !== undefined) {
    // Matched piece by piece, not as a regular expression: `^/.*/.*/.*/.*/z$` backtracks
    // polynomially, and a 1 KB path of the client's took 19 s of CPU against it.
    const parts = canonicalPathPattern(condition.path)!.split('*');
    const foldedParts = parts.map((part) => part.toLowerCase());
    tests.push((_request, path, fold) => (fold ? globMatches(foldedParts, path.toLowerCase()) : globMatches(parts, path)));
  }
  if (condition.header !== undefined) {
    const header = condition.header;
    const name = header.name.toLowerCase();
    const regex = header.matches === undefined ? undefined : new RegExp(header.matches);
    tests.push((request) => {
      const raw = request.headers[name];
      const value = Array.isArray(raw) ? raw.join(', ') : raw;
      if (header.present !== undefined) return header.present === (value !== undefined);
      if (value === undefined) return false;
      if (header.equals !== undefined) return value === header.equals;
      if (header.contains !== undefined) return value.includes(header.contains);
      return regex?.test(value) ?? false;
    });
  }
  return (request, path, fold) => tests.every((test) => test(request, path, fold));
}

/**
 * Whether the whole of `text` matches a pattern whose `*` stands for any run of characters,
 * given as the pieces between its stars: the first a prefix, the last a suffix, each other
 * found leftmost after the one before (leftmost is never wrong with `*` the only wildcard).
 * Linear in the text per piece, whatever the number of stars.
 */
export function globMatches(parts: readonly string[], text: string): boolean {
  const first = parts[0]!;
  if (parts.length === 1) return text === first;
  const last = parts[parts.length - 1]!;
  if (text.length < first.length + last.length || !text.startsWith(first) || !text.endsWith(last)) return false;
  const end = text.length - last.length;
  let at = first.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const part = parts[i]!;
    const found = text.indexOf(part, at);
    if (found < 0 || found + part.length > end) return false;
    at = found + part.length;
  }
  return true;
}
