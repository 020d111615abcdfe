/**
 * The error base of the vendor kit. A vendor's own errors carry a stable code under the
 * vendor's prefix (`COPROXY_HTTP_…`, `ACME_DLP_…`), so logs, events and metric labels of
 * several vendors on one host never name two different failures alike, and callers branch
 * on `err.code`, never on message text.
 *
 * @example
 * ```ts
 * export const DlpErrorCode = defineErrorCodes('ACME_DLP', { OriginTimeout: 'ORIGIN_TIMEOUT' } as const);
 * export class DlpError extends VendorError<(typeof DlpErrorCode)[keyof typeof DlpErrorCode]> {
 *   override readonly name = 'DlpError';
 * }
 * throw new DlpError(DlpErrorCode.OriginTimeout, 'no response within 30 s');
 * ```
 */
export class VendorError<Code extends string = string> extends Error {
  override readonly name: string = 'VendorError';

  constructor(
    readonly code: Code,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** A vendor's error-code prefix: upper-case words joined by `_`, e.g. `COPROXY_TLS`. */
export const ERROR_PREFIX_PATTERN = /^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$/;

/**
 * Prefixes every code of `names` with `prefix_`, keeping the literal types:
 * `defineErrorCodes('COPROXY_TLS', { NotTls: 'NOT_TLS' })` is
 * `{ NotTls: 'COPROXY_TLS_NOT_TLS' }`. Throws on a prefix or a code that is not upper snake case.
 */
export function defineErrorCodes<Prefix extends string, const Names extends Record<string, string>>(
  prefix: Prefix,
  names: Names,
): { readonly [K in keyof Names]: `${Prefix}_${Names[K]}` } {
  if (!ERROR_PREFIX_PATTERN.test(prefix)) throw new TypeError(`error prefix '${prefix}' is not upper snake case`);
  const codes: Record<string, string> = {};
  for (const [key, code] of Object.entries(names)) {
    if (!ERROR_PREFIX_PATTERN.test(code)) throw new TypeError(`error code '${code}' is not upper snake case`);
    codes[key] = `${prefix}_${code}`;
  }
  return Object.freeze(codes) as { readonly [K in keyof Names]: `${Prefix}_${Names[K]}` };
}

/** The `code` of an error a vendor caught: its own, a system errno name (`ECONNRESET`), or `fallback`. */
export function errorCodeOf(error: unknown, fallback: string): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.length > 0 ? code : fallback;
}
