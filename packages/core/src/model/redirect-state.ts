/**
 * The four states of a connection as seen by one redirector, after WFP's
 * `FWPS_CONNECTION_REDIRECT_STATE`:
 *
 * - `NotRedirected`: no redirector has redirected this flow;
 * - `RedirectedBySelf`: this redirector made the latest redirect of the flow;
 * - `RedirectedByOther`: other redirectors did, this one never did;
 * - `PreviouslyRedirectedBySelf`: this redirector did, and another one redirected it since.
 *
 * A redirector redirects a flow only when {@link shouldRedirect} says so.
 */
export const RedirectState = {
  NotRedirected: 'NotRedirected',
  RedirectedBySelf: 'RedirectedBySelf',
  RedirectedByOther: 'RedirectedByOther',
  PreviouslyRedirectedBySelf: 'PreviouslyRedirectedBySelf',
} as const;

export type RedirectState = (typeof RedirectState)[keyof typeof RedirectState];

/**
 * The WFP rule: redirect only a flow nobody redirected, or one only others redirected.
 * Never a flow this redirector already handled, so each redirector sees a flow once.
 */
export function shouldRedirect(state: RedirectState): boolean {
  switch (state) {
    case RedirectState.NotRedirected:
    case RedirectState.RedirectedByOther:
      return true;
    case RedirectState.RedirectedBySelf:
    case RedirectState.PreviouslyRedirectedBySelf:
      return false;
  }
}
