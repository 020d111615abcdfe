import { afterEach, describe, expect, it, vi } from 'vitest';
import { PerSecondLimit } from './per-second-limit.js';

describe('PerSecondLimit', () => {
  afterEach(() => vi.useRealTimers());

  it('calls back once, on the first event over the limit within a second, and counts afresh each second', () => {
    vi.useFakeTimers({ now: 10_000 });
    const exceeded = vi.fn();
    const limit = new PerSecondLimit(3, exceeded);
    for (let i = 0; i < 3; i++) limit.add();
    vi.setSystemTime(11_000);
    for (let i = 0; i < 3; i++) limit.add();
    expect(exceeded).not.toHaveBeenCalled();
    limit.add();
    expect(exceeded).toHaveBeenCalledTimes(1);
    for (let i = 0; i < 10; i++) limit.add();
    expect(exceeded).toHaveBeenCalledTimes(1);
  });
});
