import { afterEach, describe, expect, it } from 'vitest';
import { onShutdownSignal } from './shutdown.js';

const disposers: (() => void)[] = [];
afterEach(() => {
  for (const dispose of disposers.splice(0)) dispose();
});

describe('graceful shutdown on signals', () => {
  it('calls the handler once, for the first of SIGINT and SIGTERM', () => {
    const seen: string[] = [];
    disposers.push(onShutdownSignal((signal) => seen.push(signal)));

    process.emit('SIGTERM', 'SIGTERM');
    process.emit('SIGINT', 'SIGINT');

    expect(seen).toEqual(['SIGTERM']);
  });

  it('stays registered after the first signal, so a backend hook that counts listeners still sees one', () => {
    const before = process.listenerCount('SIGTERM');
    const dispose = onShutdownSignal(() => undefined);
    disposers.push(dispose);

    process.emit('SIGTERM', 'SIGTERM');

    expect(process.listenerCount('SIGTERM')).toBe(before + 1);
    dispose();
    expect(process.listenerCount('SIGTERM')).toBe(before);
  });
});
