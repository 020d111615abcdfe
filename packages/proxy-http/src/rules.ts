import { type RuleFile, loadRules as loadKitRules, parseRules as parseKitRules } from '@coproxy/core/vendor';
import { RulesError } from './errors.js';

/**
 * The rule file (`--rules`) lives in core's vendor kit (`@coproxy/core/vendor`: schema,
 * evaluation), shared with coproxy-tls's bump, so a rule written once works on both
 * vendors. Here it keeps this package's API: an unusable file is a `RulesError`
 * (`COPROXY_HTTP_RULES_INVALID`).
 */
export { rulesInspector } from '@coproxy/core/vendor';
export type { Rule, RuleFile } from '@coproxy/core/vendor';

const httpError = (source: string, problems: readonly string[]): RulesError => new RulesError(source, problems);

/** Validates a parsed rule file; throws `RulesError` listing every problem with its path. */
export function parseRules(value: unknown, source = 'rules'): RuleFile {
  return parseKitRules(value, source, httpError);
}

/** Reads, parses and validates a rule file; throws `RulesError`. */
export function loadRules(file: string): RuleFile {
  return loadKitRules(file, httpError);
}
