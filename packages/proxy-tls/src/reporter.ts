import type { Logger } from 'pino';
import { Subject } from 'rxjs';
import type { FailureEventType, Handshake, QuicHandshake, TlsExchange, TlsOwnEvent } from './events.js';
import type { TlsProxyMetrics } from './metrics.js';

/**
 * Where every concern of the proxy says what happened: one metric, one log line, one event
 * per fact, the same way from the hello peek, the policy decision, the splice and the bump.
 * An event nobody subscribes to is not built into a stream (`observed`). The events go to
 * `emit`, the vendor kit's, which merges them after the redirector's into `events$`.
 */
export class Reporter {
  readonly handshakes = new Subject<Handshake>();
  readonly exchanges = new Subject<TlsExchange>();
  readonly quicHandshakes = new Subject<QuicHandshake>();

  constructor(
    readonly metrics: TlsProxyMetrics,
    readonly logger: Logger,
    readonly emit: (event: TlsOwnEvent) => void,
  ) {}

  /** A failure that ends a connection: counted by code, logged as a warning, an event. */
  fail(type: FailureEventType, connectionId: string, code: string, message: string): void {
    this.metrics.errors.inc({ code });
    this.logger.warn({ connectionId, code, message }, type);
    this.emit({ type, connectionId, code, message });
  }

  handshake(handshake: Handshake): void {
    this.logger.info({ handshake }, 'handshake');
    if (this.handshakes.observed) this.handshakes.next(handshake);
  }

  /** A QUIC flow's hello read and decided: counted by action, logged as `handshake` (`transport: 'quic'`), an event. */
  quicHandshake(handshake: QuicHandshake): void {
    this.metrics.quicFlows.inc({ action: handshake.action });
    this.logger.info({ handshake }, 'handshake');
    this.emit({ type: 'quic-handshake', handshake });
    if (this.quicHandshakes.observed) this.quicHandshakes.next(handshake);
  }

  exchange(exchange: TlsExchange): void {
    this.metrics.exchanges.inc();
    this.logger.info({ exchange }, 'exchange');
    if (this.exchanges.observed) this.exchanges.next(exchange);
  }

  /** Ends the handshake, exchange and QUIC handshake streams; the events stream ends with the vendor kit's `close()`. */
  complete(): void {
    this.handshakes.complete();
    this.exchanges.complete();
    this.quicHandshakes.complete();
  }
}
