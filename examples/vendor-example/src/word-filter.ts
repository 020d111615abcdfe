import type net from 'node:net';
import { type AcceptedConnection, relay } from '@coproxy/core';
import {
  RedirectorMetrics,
  VendorError,
  type VendorLogger,
  type VendorRedirectorOptions,
  createVendorRedirector,
  defineErrorCodes,
} from '@coproxy/core/vendor';
import { Counter } from 'prom-client';

// Errors: a stable code under the vendor's own prefix, never shared with another vendor.
export const WordFilterErrorCode = defineErrorCodes('WORD_FILTER', { EmptyWord: 'EMPTY_WORD' });
export class WordFilterError extends VendorError<(typeof WordFilterErrorCode)[keyof typeof WordFilterErrorCode]> {
  override readonly name = 'WordFilterError';
}

// Options: the redirector's (id, priority, match, backend, failMode…) come from the kit.
export interface WordFilterOptions extends VendorRedirectorOptions {
  /** A flow whose first bytes contain it is closed unrelayed. */
  readonly word: string;
  readonly logger: VendorLogger;
}

// Metrics: the kit counts the redirector's events under our prefix; we add our own counter.
export class WordFilterMetrics extends RedirectorMetrics {
  readonly flows = new Counter({ name: 'word_filter_flows_total', help: 'Flows inspected, by verdict', labelNames: ['verdict'] as const, registers: [this.registry] });
  constructor() {
    super({ prefix: 'word_filter' });
  }
}

export type WordFilterEvent = { readonly type: 'inspected'; readonly connectionId: string; readonly verdict: 'pass' | 'block' };

/** Reads what the client sends first: up to `max` bytes, or what came within `timeoutMs`. */
function firstBytes(socket: net.Socket, max: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve) => {
    let head = Buffer.alloc(0);
    const done = (): void => {
      clearTimeout(timer);
      socket.off('data', onData).off('end', done).off('error', done).pause();
      resolve(head);
    };
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      if (head.length >= max) done();
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on('data', onData).once('end', done).once('error', done);
  });
}

/**
 * A TCP word filter: reads each redirected flow's first bytes, closes the flow when they
 * contain `word`, else relays it onward with its redirect records, so the next vendor in
 * the chain inspects it once and no vendor sees it twice.
 */
export function createWordFilter(options: WordFilterOptions) {
  if (options.word === '') throw new WordFilterError(WordFilterErrorCode.EmptyWord, '--word: must not be empty');
  const word = Buffer.from(options.word);
  const metrics = new WordFilterMetrics();
  const vendor = createVendorRedirector<WordFilterEvent>({
    options,
    defaultMatch: { ports: [80] },
    metrics,
    onAccepted: (conn) => void inspect(conn),
  });

  async function inspect(conn: AcceptedConnection): Promise<void> {
    const head = await firstBytes(conn.socket, 1024, 1000);
    const verdict = head.includes(word) ? 'block' : 'pass';
    metrics.flows.inc({ verdict });
    options.logger.info({ connectionId: conn.id, verdict, firstBytes: head.subarray(0, 16).toString('hex') }, 'inspected');
    vendor.emit({ type: 'inspected', connectionId: conn.id, verdict });
    if (verdict === 'block') return void conn.socket.destroy();
    // A failed onward leg is already an 'onward-failed' event, counted by the kit's metrics.
    const upstream = await conn.connectOnward().catch(() => undefined);
    if (upstream === undefined) return void conn.socket.destroy();
    upstream.write(head);
    conn.socket.resume();
    await relay(conn.socket, upstream);
  }

  return { events$: vendor.events$, metrics, listening: () => vendor.listening(), close: () => vendor.close() };
}
