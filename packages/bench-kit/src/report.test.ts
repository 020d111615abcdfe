import { describe, expect, it } from 'vitest';
import { ratioText } from './report.js';

describe('ratioText', () => {
  it('divides with two decimals, and says - when there is nothing to divide by', () => {
    expect(ratioText(3, 4)).toBe('0.75');
    expect(ratioText(10, 3)).toBe('3.33');
    expect(ratioText(5, 0)).toBe('-');
    expect(ratioText(5, undefined)).toBe('-');
  });
});
