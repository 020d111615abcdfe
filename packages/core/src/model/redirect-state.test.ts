import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RecordsFullError } from './errors.js';
import { MAX_REDIRECTS, RedirectRecords } from './redirect-records.js';
import { RedirectState, shouldRedirect } from './redirect-state.js';

const redirectorId = fc.stringMatching(/^[a-z0-9-]{1,32}$/);
const redirectorIds = fc.uniqueArray(redirectorId, { maxLength: MAX_REDIRECTS });
const fromIds = (ids: readonly string[]): RedirectRecords =>
  ids.reduce((acc, id) => acc.withRedirect(id), RedirectRecords.empty);

/** Any id: one of those in the records, or one drawn afresh (usually absent). */
const idsAndProbe = redirectorIds.chain((ids) =>
  fc.tuple(fc.constant(ids), ids.length === 0 ? redirectorId : fc.oneof(fc.constantFrom(...ids), redirectorId)),
);

describe('the redirect state algebra', () => {
  it('reports NotRedirected for every redirector on empty records', () => {
    fc.assert(
      fc.property(redirectorId, (id) => {
        expect(RedirectRecords.empty.stateFor(id)).toBe(RedirectState.NotRedirected);
      }),
    );
    expect(RedirectRecords.empty.hops).toBe(0);
    expect(RedirectRecords.empty.redirectedBy).toEqual([]);
  });

  it('reports RedirectedBySelf to the redirector that redirected last', () => {
    const records = RedirectRecords.empty.withRedirect('acme-av');
    expect(records.stateFor('acme-av')).toBe(RedirectState.RedirectedBySelf);
    expect(records.redirectedBy).toEqual(['acme-av']);
    expect(records.hops).toBe(1);
  });

  it('reports PreviouslyRedirectedBySelf once another redirector redirected the flow since', () => {
    const records = RedirectRecords.empty.withRedirect('acme-av').withRedirect('dlp');
    expect(records.stateFor('acme-av')).toBe(RedirectState.PreviouslyRedirectedBySelf);
    expect(records.stateFor('dlp')).toBe(RedirectState.RedirectedBySelf);
    expect(records.redirectedBy).toEqual(['acme-av', 'dlp']);
  });

  it('reports RedirectedByOther to a redirector absent from non-empty records', () => {
    fc.assert(
      fc.property(redirectorIds.filter((ids) => ids.length > 0), redirectorId, (ids, id) => {
        fc.pre(!ids.includes(id));
        expect(fromIds(ids).stateFor(id)).toBe(RedirectState.RedirectedByOther);
      }),
      { numRuns: 200 },
    );
  });

  it('gives every redirector in the records the self states: the last one RedirectedBySelf, the others Previously', () => {
    fc.assert(
      fc.property(redirectorIds.filter((ids) => ids.length > 0), (ids) => {
        const records = fromIds(ids);
        ids.forEach((id, i) => {
          expect(records.stateFor(id)).toBe(
            i === ids.length - 1 ? RedirectState.RedirectedBySelf : RedirectState.PreviouslyRedirectedBySelf,
          );
        });
      }),
      { numRuns: 200 },
    );
  });

  it('redirects exactly the NotRedirected and RedirectedByOther states', () => {
    expect(shouldRedirect(RedirectState.NotRedirected)).toBe(true);
    expect(shouldRedirect(RedirectState.RedirectedByOther)).toBe(true);
    expect(shouldRedirect(RedirectState.RedirectedBySelf)).toBe(false);
    expect(shouldRedirect(RedirectState.PreviouslyRedirectedBySelf)).toBe(false);
  });

  it('lets a redirector redirect a flow exactly when it is not already in the records', () => {
    fc.assert(
      fc.property(idsAndProbe, ([ids, id]) => {
        const records = fromIds(ids);
        expect(shouldRedirect(records.stateFor(id))).toBe(!records.redirectedBy.includes(id));
      }),
      { numRuns: 200 },
    );
  });

  it('leaves the records it extends unchanged', () => {
    fc.assert(
      fc.property(redirectorIds.filter((ids) => ids.length < MAX_REDIRECTS), redirectorId, (ids, id) => {
        fc.pre(!ids.includes(id));
        const before = fromIds(ids);
        const after = before.withRedirect(id);
        expect(before.redirectedBy).toEqual(ids);
        expect(after.redirectedBy).toEqual([...ids, id]);
        expect(after.hops).toBe(ids.length + 1);
        expect(after.toJSON()).toEqual({ redirectedBy: [...ids, id] });
      }),
    );
  });

  it(`accepts ${MAX_REDIRECTS} redirects and refuses one more with RecordsFullError`, () => {
    const ids = Array.from({ length: MAX_REDIRECTS }, (_, i) => `vendor-${i}`);
    const full = fromIds(ids);
    expect(full.hops).toBe(16);
    let error: unknown;
    try {
      full.withRedirect('one-too-many');
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(RecordsFullError);
    expect((error as RecordsFullError).code).toBe('COPROXY_RECORDS_FULL');
    expect((error as RecordsFullError).limit).toBe(MAX_REDIRECTS);
    expect(full.redirectedBy).toEqual(ids);
  });

  it('freezes records so that no proxy can edit them', () => {
    const records = RedirectRecords.empty.withRedirect('acme-av');
    expect(Object.isFrozen(records)).toBe(true);
    expect(Object.isFrozen(records.redirectedBy)).toBe(true);
    expect(Object.isFrozen(RedirectRecords.empty.redirectedBy)).toBe(true);
    expect(() => (records.redirectedBy as string[]).push('dlp')).toThrow(TypeError);
    expect(() => {
      (records.redirectedBy as string[])[0] = 'dlp';
    }).toThrow(TypeError);
    expect(() => {
      (records as { redirectedBy: readonly string[] }).redirectedBy = [];
    }).toThrow(TypeError);
    expect(records.redirectedBy).toEqual(['acme-av']);
  });
});
