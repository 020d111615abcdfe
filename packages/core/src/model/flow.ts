/** One end of a TCP connection, as a socket reports it. */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/**
 * What happens to matching traffic while the redirector is down (its process died
 * without uninstalling). `open` lets it through uninspected; `closed` refuses it.
 * A deliberate `close()` uninstalls the rule in both modes.
 */
export type FailMode = 'open' | 'closed';

/** The most bytes of context a redirector may have the redirect layer attach to each flow. */
export const MAX_CONTEXT_BYTES = 1024;
