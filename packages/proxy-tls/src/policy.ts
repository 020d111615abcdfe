import fs from 'node:fs';
import { z } from 'zod';
import type { SniAnomaly } from './client-hello.js';
import { TlsErrorCode, TlsProxyError } from './errors.js';

/**
 * The policy file: ordered rules, the first whose `when` holds decides; `default` (splice
 * unless given) decides the rest.
 *
 * ```json
 * {
 *   "default": "splice",
 *   "rules": [
 *     { "name": "bank", "when": { "sni": "*.bank.example" }, "action": "splice" },
 *     { "name": "inspect-api", "when": { "sni": "api.example.com", "alpn": ["http/1.1"] }, "action": "bump" },
 *     { "name": "no-old-curl", "when": { "ja3": "e7d705a3286e19ea42f587b344ee6865" }, "action": "block" }
 *   ]
 * }
 * ```
 *
 * `sni`: exact, or `*.domain` for any subdomain, matched against the name lower-cased and
 * without a trailing dot; `nosni` matches hellos without a usable name (no server_name, or
 * one whose name is undefined because of an anomaly). `sniAnomaly`: `true` for any unusual
 * server_name, or a list of the `SniAnomaly` kinds to match. `alpn`: the hello offers at
 * least one of these. `ja3`: the MD5; `ja4`: the JA4 string. `ech`: `true` for a hello that
 * carries an `encrypted_client_hello` extension (real ECH or GREASE: the two look the same
 * on purpose), `false` for one without: an operator who would rather not bump ECH hellos
 * says `{ "when": { "ech": true }, "action": "splice" }`, and the handshake log shows it.
 *
 * QUIC flows (UDP) go through the same rules, with the ClientHello of their Initial:
 * `quic`: `true` matches QUIC flows only, `false` TCP connections only. A QUIC flow cannot
 * be bumped, so the action reads: `splice` relays the flow's datagrams unchanged, `block`
 * blocks it, and `bump` blocks it too, so that the client falls back to TCP at once, where
 * it is bumped (the default of a bump policy is thus `block` for QUIC). An operator who
 * wants HTTP/3 to pass says `{ "when": { "quic": true }, "action": "splice" }`.
 */
export type Action = 'splice' | 'block' | 'bump';

const action = z.enum(['splice', 'block', 'bump']);
const SNI_ANOMALIES = ['empty-list', 'empty-name', 'not-host-name', 'multiple-names', 'too-long', 'invalid-name', 'trailing-dot'] as const satisfies readonly SniAnomaly[];
const rule = z
  .object({
    name: z.string().min(1).max(64),
    when: z
      .object({
        sni: z.string().regex(/^(\*\.)?[A-Za-z0-9.-]+$/, "must be a host name, or '*.' and a domain").optional(),
        nosni: z.literal(true).optional(),
        sniAnomaly: z.union([z.literal(true), z.array(z.enum(SNI_ANOMALIES)).min(1)]).optional(),
        alpn: z.array(z.string().min(1).max(255)).min(1).optional(),
        ja3: z.string().regex(/^[0-9a-f]{32}$/, 'must be 32 lower-case hex digits (an MD5)').optional(),
        ja4: z.string().regex(/^[tqd]\d{2}[di]\d{4}[0-9a-z]{2}_[0-9a-f]{12}_[0-9a-f]{12}$/, 'must be a JA4 fingerprint').optional(),
        ech: z.boolean().optional(),
        quic: z.boolean().optional(),
      })
      .strict()
      .optional(),
    action,
  })
  .strict();
const policyFile = z.object({ default: action.optional(), rules: z.array(rule).optional() }).strict();

export type PolicyFile = z.infer<typeof policyFile>;

export class PolicyError extends TlsProxyError<typeof TlsErrorCode.PolicyInvalid> {
  override readonly name = 'PolicyError';
  constructor(
    readonly source: string,
    readonly problems: readonly string[],
  ) {
    super(TlsErrorCode.PolicyInvalid, `invalid policy in ${source}:\n  ${problems.join('\n  ')}`);
  }
}

export function parsePolicy(value: unknown, source = 'policy'): PolicyFile {
  const result = policyFile.safeParse(value);
  if (result.success) return result.data;
  throw new PolicyError(
    source,
    result.error.issues.map((issue) => `${source}${issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}: ${issue.message}`),
  );
}

export function loadPolicy(file: string): PolicyFile {
  let value: unknown;
  try {
    value = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    throw new PolicyError(file, [`cannot read it as JSON: ${(error as Error).message}`]);
  }
  return parsePolicy(value, file);
}

/** What a rule sees of a handshake. */
export interface HandshakeFacts {
  readonly sni: string | undefined;
  /** Set when server_name was present but unusual (see `SniAnomaly`). */
  readonly sniAnomaly?: SniAnomaly | undefined;
  readonly alpn: readonly string[];
  readonly ja3: string;
  readonly ja4: string;
  /** The hello carries an encrypted_client_hello extension (ECH or its GREASE); `sni` is then the outer name. */
  readonly ech: boolean;
  /** The hello came in a QUIC Initial (a UDP flow); absent or false for TCP. */
  readonly quic?: boolean;
}

export interface PolicyDecision {
  readonly action: Action;
  /** The rule that decided, or undefined for the default. */
  readonly rule: string | undefined;
}

export function compilePolicy(file: PolicyFile): (facts: HandshakeFacts) => PolicyDecision {
  const rules = (file.rules ?? []).map((r) => ({ name: r.name, action: r.action, test: compileWhen(r.when) }));
  const fallback = file.default ?? 'splice';
  return (facts) => {
    const hit = rules.find((r) => r.test(facts));
    return hit === undefined ? { action: fallback, rule: undefined } : { action: hit.action, rule: hit.name };
  };
}

function compileWhen(when: z.infer<typeof rule>['when']): (facts: HandshakeFacts) => boolean {
  if (when === undefined) return () => true;
  const tests: ((facts: HandshakeFacts) => boolean)[] = [];
  if (when.sni !== undefined) {
    // The same canonical form as the hello's name: lower case, no trailing dot.
    const sni = when.sni.toLowerCase().replace(/\.$/, '');
    tests.push(sni.startsWith('*.') ? (f) => f.sni?.endsWith(sni.slice(1)) === true : (f) => f.sni === sni);
  }
  if (when.nosni === true) tests.push((f) => f.sni === undefined);
  if (when.sniAnomaly === true) tests.push((f) => f.sniAnomaly !== undefined);
  else if (when.sniAnomaly !== undefined) {
    const kinds = new Set<SniAnomaly>(when.sniAnomaly);
    tests.push((f) => f.sniAnomaly !== undefined && kinds.has(f.sniAnomaly));
  }
  if (when.alpn !== undefined) {
    const wanted = new Set(when.alpn);
    tests.push((f) => f.alpn.some((p) => wanted.has(p)));
  }
  if (when.ja3 !== undefined) tests.push((f) => f.ja3 === when.ja3);
  if (when.ja4 !== undefined) tests.push((f) => f.ja4 === when.ja4);
  if (when.ech !== undefined) tests.push((f) => f.ech === when.ech);
  if (when.quic !== undefined) tests.push((f) => (f.quic ?? false) === when.quic);
  return (facts) => tests.every((t) => t(facts));
}
