import { RecordsFullError } from './errors.js';
import { assertRedirectorId } from './redirector-id.js';
import { RedirectState } from './redirect-state.js';

/** At most this many redirects fit in one flow's records (the hop bound N). */
export const MAX_REDIRECTS = 16;

/**
 * The redirect history of one flow: which redirectors redirected it, in order.
 *
 * Opaque to proxies, as WFP's records blob is: a proxy reads the state for itself and
 * passes the records on with `connectOnward()`; it never edits them. Instances are
 * immutable, so a records object can be shared between connections freely.
 *
 * @example
 * ```ts
 * conn.records.stateFor('acme-av');  // 'RedirectedBySelf' on acme-av's own accepted flows
 * conn.records.redirectedBy;         // ['parental-filter', 'acme-av']
 * ```
 */
export class RedirectRecords {
  static readonly empty = new RedirectRecords([]);

  /** Redirector ids in redirect order, for diagnostics. */
  readonly redirectedBy: readonly string[];

  /** Trusts its input: build records through `empty`, `withRedirect` or the codec. */
  private constructor(redirectedBy: readonly string[]) {
    this.redirectedBy = Object.freeze([...redirectedBy]);
    Object.freeze(this);
  }

  /** @internal for the codec, which has validated the ids. */
  static fromValidatedIds(ids: readonly string[]): RedirectRecords {
    return ids.length === 0 ? RedirectRecords.empty : new RedirectRecords(ids);
  }

  /** How many redirects the flow has gone through. */
  get hops(): number {
    return this.redirectedBy.length;
  }

  /** What `FwpsQueryConnectionRedirectState` would answer for this redirector. */
  stateFor(redirectorId: string): RedirectState {
    const ids = this.redirectedBy;
    if (ids.length === 0) return RedirectState.NotRedirected;
    if (ids[ids.length - 1] === redirectorId) return RedirectState.RedirectedBySelf;
    if (ids.includes(redirectorId)) return RedirectState.PreviouslyRedirectedBySelf;
    return RedirectState.RedirectedByOther;
  }

  /**
   * The records after one more redirect. Callers check `shouldRedirect(stateFor(id))`
   * first, so an id never appears twice.
   */
  withRedirect(redirectorId: string): RedirectRecords {
    assertRedirectorId(redirectorId, 'redirectorId');
    if (this.redirectedBy.length >= MAX_REDIRECTS) throw new RecordsFullError(MAX_REDIRECTS);
    return new RedirectRecords([...this.redirectedBy, redirectorId]);
  }

  toJSON(): { redirectedBy: readonly string[] } {
    return { redirectedBy: this.redirectedBy };
  }
}
