/**
 * Counts events in one-second windows; the first window over `limit` calls `onExceeded`,
 * once. For what node:http2 has no option for: streams a peer resets before they were
 * answered (a rapid-reset attacker makes a proxy start work per stream, inspection and an
 * origin request, and cancels it at once, never holding a stream open, so the concurrency
 * limit does not bound it), and PING/SETTINGS floods. Both reference vendors use it.
 */
export class PerSecondLimit {
  private windowStart = 0;
  private counted = 0;
  private tripped = false;

  constructor(
    private readonly limit: number,
    private readonly onExceeded: () => void,
  ) {}

  /** One more event now. */
  add(): void {
    const now = Date.now();
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.counted = 0;
    }
    if (++this.counted > this.limit && !this.tripped) {
      this.tripped = true;
      this.onExceeded();
    }
  }
}
