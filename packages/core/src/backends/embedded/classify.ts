import type { RedirectRecords } from '../../model/redirect-records.js';
import { shouldRedirect } from '../../model/redirect-state.js';
import type { CompiledMatch, Destination, Transport } from '../../model/match-rule.js';

/** What classification needs of a redirector: its id and rule, nothing about transport. */
export interface Classifiable {
  readonly id: string;
  readonly match: CompiledMatch;
}

/**
 * The redirect layer's decision, as a pure function: the redirectors that may take this
 * flow, in the order given (the table is kept sorted by priority). The first one that is
 * up gets it. A redirector is skipped when its rule does not match or when the flow's
 * records say it already redirected this flow (WFP's redirect-state rule).
 */
export function* candidates<TEntry extends Classifiable>(
  table: readonly TEntry[],
  destination: Destination,
  records: RedirectRecords,
  transport: Transport = 'tcp',
): Generator<TEntry> {
  for (const entry of table) {
    if (entry.match.matches(destination, transport) && shouldRedirect(records.stateFor(entry.id))) yield entry;
  }
}
