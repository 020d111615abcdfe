import type net from 'node:net';
import { spliceBurst } from '@coproxy/core';
import type { Logger } from 'pino';
import { ProxyErrorCode } from './errors.js';
import { type Exchange, asError, inspectResponse, originBrokeCode, planResponse } from './exchange.js';
import { LAST_CHUNK, writeBody } from './http-head.js';
import type { Inspector } from './inspector.js';
import { type HttpParser, type MessageHead, createParser, isParserError } from './node-http-parser.js';

/**
 * The origin side of the framing: one connection to the origin that a client connection's
 * requests share, one at a time; its responses parsed and their bodies moved to the client
 * with backpressure. How each response goes to the client is exchange.ts's to decide
 * (`planResponse`); what becomes of the exchange afterwards is the owner's.
 */

/** Response heads from origins may be larger than what clients may send. */
const ORIGIN_MAX_HEADER_SIZE = 64 * 1024;
/** What Node reads from a socket at most at a time: a read this long may have left more waiting. */
const NODE_READ_BYTES = 64 * 1024;

/**
 * Whether the origin connection can carry another request. `closing-by-origin`: the origin
 * said it closes after its response; it is left to close first (so the TIME_WAIT is its,
 * not a port of ours). `retired`: closed, broken, or not to be reused.
 */
export type LegReuse = 'reusable' | 'closing-by-origin' | 'retired';

/** What the leg's parser is reading now. */
export type LegMessage =
  /** The current exchange's final response (or nothing yet). */
  | { readonly kind: 'final' }
  /** A 1xx response: its end is not the exchange's. */
  | { readonly kind: 'informational' }
  /** The origin answered 101: what follows its head is the upgraded protocol. */
  | { readonly kind: 'upgraded'; readonly head: MessageHead };

/** What the leg needs from the client connection that owns it. */
export interface LegOwner {
  /** The client's socket, where responses go. */
  readonly client: net.Socket;
  readonly connectionId: string;
  readonly logger: Logger;
  readonly inspectors: readonly Inspector[];
  /** Some inspector has `inspectResponse`: response heads wait for it. */
  readonly inspectsResponses: boolean;
  readonly originTimeoutMs: number;
  clientClosed(): boolean;
  tunnelled(): boolean;
  fail(exchange: Exchange, code: string, error: Error, status: 502 | 504 | undefined): void;
  /** The whole response went to the client. */
  responseDone(exchange: Exchange): void;
  /** The origin accepted the upgrade; `rest` is what it sent after its head. */
  openTunnel(leg: OriginLeg, head: MessageHead, rest: Buffer): void;
  /** The origin's socket closed. */
  legClosed(leg: OriginLeg): void;
}

export class OriginLeg {
  readonly parser: HttpParser;
  /** The exchange whose response is being read. */
  current: Exchange | undefined;
  message: LegMessage = { kind: 'final' };
  reuse: LegReuse = 'reusable';
  /** The origin keeps the connection open after the current response. */
  private keepAlive = true;
  /** The client's socket is full: the origin is not read until it drains. */
  private waitingForClientDrain = false;
  /**
   * Bytes of a Content-Length body still to come, passed to the client straight from the
   * socket's reads: the parser would only count them and copy each chunk.
   */
  private passBody = 0;
  private readonly client: net.Socket;

  constructor(
    readonly socket: net.Socket,
    private readonly owner: LegOwner,
  ) {
    this.client = owner.client;
    this.parser = createParser('response', ORIGIN_MAX_HEADER_SIZE, {
      onHead: (head) => this.onResponseHead(head),
      onBody: (chunk) => this.onResponseBody(chunk),
      onComplete: () => this.onResponseComplete(),
    });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onOriginData(chunk));
    socket.on('end', () => this.onOriginEnd());
    socket.on('error', (error: NodeJS.ErrnoException) => this.onOriginError(error));
    socket.once('close', () => {
      this.retire();
      // Freed with its socket, or the parser keeps the leg and the client connection in memory for good.
      this.parser.close();
      owner.legClosed(this);
    });
    // No byte from the origin for this long: 504 before its response head, a cut after it;
    // an idle kept-alive origin connection is just closed.
    socket.setTimeout(owner.originTimeoutMs, () => this.onOriginTimeout());
  }

  /** The leg carries no further request; one the origin is closing stays so, to be left to it. */
  retire(): void {
    if (this.reuse === 'reusable') this.reuse = 'retired';
  }

  /** A tunnel takes the socket over: the leg's listeners go. */
  detach(): void {
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('end');
    this.socket.setTimeout(0);
  }

  private onOriginData(data: Buffer): void {
    let chunk = data;
    if (this.passBody > 0) {
      const length = Math.min(chunk.length, this.passBody);
      this.passBody -= length;
      this.relayResponseBody(length === chunk.length ? chunk : chunk.subarray(0, length));
      // A read that filled Node's buffer says more is waiting: that part goes in the kernel.
      if (this.passBody > 0 && length === chunk.length && data.length >= NODE_READ_BYTES) this.spliceResponseBody();
      if (this.passBody > 0 || this.socket.destroyed || this.client.destroyed) return;
      // The body is complete; the parser, which saw only its start, starts afresh.
      this.parser.reset();
      this.onResponseComplete();
      if (length === chunk.length) return;
      chunk = chunk.subarray(length);
    }
    // What one read yields (a response head and its body, often) leaves in one write.
    this.client.cork();
    const consumed = this.parser.execute(chunk);
    this.client.uncork();
    if (isParserError(consumed)) {
      this.retire();
      this.socket.destroy();
      const exchange = this.current;
      if (exchange !== undefined) this.owner.fail(exchange, ProxyErrorCode.OriginMalformed, consumed, 502);
      return;
    }
    if (this.message.kind === 'upgraded') this.owner.openTunnel(this, this.message.head, chunk.subarray(consumed));
  }

  private onResponseHead(head: MessageHead): boolean {
    const exchange = this.current;
    if (exchange === undefined) {
      // A response nobody asked for: the origin does not speak HTTP as it should.
      this.owner.logger.warn({ connection: this.owner.connectionId, status: head.status }, 'unsolicited response from the origin');
      this.retire();
      this.socket.destroy();
      return true;
    }
    const plan = planResponse(exchange, head);
    switch (plan.kind) {
      case 'informational':
        this.message = { kind: 'informational' };
        if (plan.head !== undefined) this.client.write(plan.head, 'latin1');
        return false;
      case 'upgrade':
        this.message = { kind: 'upgraded', head };
        return true;
      case 'unasked-upgrade':
        this.owner.fail(exchange, ProxyErrorCode.OriginMalformed, new Error('the origin switched protocols without being asked to'), 502);
        this.retire();
        this.socket.destroy();
        return true;
      case 'final':
        break;
      default:
        return unreachable(plan);
    }
    this.keepAlive = plan.keepAlive;
    if (!this.owner.inspectsResponses) {
      this.sendResponseHead(exchange, plan.head);
      if (plan.contentLength !== undefined) this.passBody = plan.contentLength;
      return plan.noBody;
    }
    // Response inspectors see the head before the client does; the body waits meanwhile.
    exchange.responseProgress = { state: 'inspecting', chunks: [], complete: false };
    this.socket.pause();
    void inspectResponse(this.owner.inspectors, exchange).then(
      () => {
        if (this.owner.clientClosed() || exchange.finished) return;
        const held = exchange.responseProgress;
        this.sendResponseHead(exchange, plan.head);
        if (held.state === 'inspecting') {
          for (const chunk of held.chunks) writeBody(this.client, chunk, exchange.toClient);
          if (held.complete) this.completeResponse(exchange);
        }
        this.socket.resume();
      },
      (error: unknown) => {
        this.retire();
        this.socket.destroy();
        this.owner.fail(exchange, ProxyErrorCode.InspectorFailed, asError(error), 502);
      },
    );
    return plan.noBody;
  }

  private sendResponseHead(exchange: Exchange, head: string): void {
    exchange.responseProgress = { state: 'streaming' };
    this.client.write(head, 'latin1'); // latin1 as parsed: see ClientConnection.begin()
  }

  private onResponseBody(chunk: Buffer): void {
    this.passBody -= Math.min(this.passBody, chunk.length); // the part that came with the head
    this.relayResponseBody(chunk);
  }

  private relayResponseBody(chunk: Buffer): void {
    const exchange = this.current;
    if (exchange === undefined || exchange.finished) return;
    exchange.responseBytes += chunk.length;
    if (exchange.responseProgress.state === 'inspecting') return void exchange.responseProgress.chunks.push(chunk);
    if (!writeBody(this.client, chunk, exchange.toClient) && !this.waitingForClientDrain) {
      this.waitingForClientDrain = true;
      this.socket.pause();
      this.client.once('drain', () => {
        this.waitingForClientDrain = false;
        this.socket.resume();
      });
    }
  }

  /**
   * The rest of a Content-Length body that is already waiting in the origin socket goes to
   * the client inside the kernel (core's `spliceBurst`), never more than the body: the next
   * response stays for the parser. Only when the body is passed on as it is, and nothing
   * is queued towards the client.
   */
  private spliceResponseBody(): void {
    const exchange = this.current;
    if (exchange === undefined || exchange.finished || exchange.responseProgress.state === 'inspecting' || exchange.toClient !== 'length' || this.waitingForClientDrain) return;
    const burst = spliceBurst(this.socket, this.client, this.passBody);
    if (burst === undefined) return;
    this.passBody -= burst.taken;
    exchange.responseBytes += burst.sent;
    if (burst.failed?.side === 'source') this.socket.destroy(burst.failed.error);
    else if (burst.failed !== undefined) this.client.destroy(burst.failed.error);
    else if (burst.rest !== undefined) this.relayResponseBody(burst.rest);
  }

  private onResponseComplete(): void {
    this.passBody = 0;
    switch (this.message.kind) {
      case 'informational':
        this.message = { kind: 'final' };
        return;
      case 'upgraded':
        return; // the tunnel follows
      case 'final':
        break;
      default:
        return unreachable(this.message);
    }
    const exchange = this.current;
    if (exchange === undefined) return;
    this.current = undefined;
    if (!exchange.requestDone) {
      // The origin answered before the whole request body was sent: the rest is dropped,
      // and this connection cannot carry another request.
      this.retire();
      if (!this.socket.writableEnded) this.socket.end();
      exchange.discardRequestBody();
    } else if (!this.keepAlive) {
      // The origin closes after this response: it closes first, so the TIME_WAIT is its,
      // not a port of ours (with a new connection per request, thousands of them slowed
      // every connect()). Should it not close, the origin timeout ends the connection.
      this.reuse = 'closing-by-origin';
    }
    const progress = exchange.responseProgress;
    if (progress.state === 'inspecting') {
      exchange.responseProgress = { state: 'inspecting', chunks: progress.chunks, complete: true };
      return;
    }
    this.completeResponse(exchange);
  }

  private completeResponse(exchange: Exchange): void {
    if (exchange.toClient === 'chunked') this.client.write(LAST_CHUNK);
    exchange.responseProgress = { state: 'complete' };
    this.owner.responseDone(exchange);
  }

  private onOriginEnd(): void {
    this.retire();
    // Onward sockets allow half-open (a relay passes half-closes on); here the origin's
    // close ends the leg, and ours follows it.
    if (!this.socket.writableEnded) this.socket.end();
    // A body delimited by the close completes here; anything else unfinished is an error.
    const error = this.parser.finish();
    const exchange = this.current;
    if (exchange === undefined || exchange.finished) return;
    if (this.message.kind === 'upgraded') return;
    const reason = error ?? new Error('the origin closed the connection before its response was complete');
    this.originBroke(exchange, Object.assign(reason, { code: exchange.response === undefined ? 'ECONNRESET' : ProxyErrorCode.OriginReset }));
  }

  private onOriginError(error: NodeJS.ErrnoException): void {
    this.retire();
    const exchange = this.current;
    if (exchange === undefined || exchange.finished || this.owner.tunnelled()) return;
    this.originBroke(exchange, error);
  }

  private originBroke(exchange: Exchange, error: Error): void {
    this.owner.fail(exchange, originBrokeCode(exchange, error), error, exchange.response === undefined ? 502 : undefined);
  }

  private onOriginTimeout(): void {
    this.retire();
    this.socket.destroy();
    const exchange = this.current;
    if (exchange === undefined || exchange.finished || this.owner.tunnelled()) return;
    const what = exchange.response === undefined ? 'response' : 'byte';
    const error = new Error(`no ${what} from the origin within ${this.owner.originTimeoutMs} ms`);
    this.owner.fail(exchange, ProxyErrorCode.OriginTimeout, error, exchange.response === undefined ? 504 : undefined);
  }
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
