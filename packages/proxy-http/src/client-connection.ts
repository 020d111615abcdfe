import http from 'node:http';
import type net from 'node:net';
import { type AcceptedConnection, errorCodeOf, relay } from '@coproxy/core';
import type { Logger } from 'pino';
import type { RequestViewError } from './canonical-request.js';
import { ProxyErrorCode } from './errors.js';
import type { HttpExchange, HttpProxyOwnEvent } from './events.js';
import {
  type Exchange,
  asError,
  decideRequest,
  exchangeLogEntry,
  exchangeOfHead,
  failureText,
  headFault,
  planRequest,
  upgradeResponseHead,
} from './exchange.js';
import { LAST_CHUNK, headersObject, localAnswer, writeBody } from './http-head.js';
import type { ConnectionInfo, Decision, Inspector } from './inspector.js';
import type { HttpProxyMetrics } from './metrics.js';
import { type HttpParser, type MessageHead, type ParserError, createParser, isParserError, isPause } from './node-http-parser.js';
import { type LegOwner, OriginLeg } from './origin-leg.js';
import { ChunkSizeGuard, checkRequestFraming } from './request-framing.js';
import { MAX_LEADING_EMPTY_BYTES, leadingEmptyBytes } from './sniff.js';

/**
 * The framing concern, client side: one client connection's bytes. Its requests are
 * parsed (Node's parser, the framing checks of request-framing.ts, the chunk-size bound),
 * queued, and their bodies moved to the origin with backpressure; upgrades become relays.
 * The origin side (responses parsed and moved back) is origin-leg.ts. What each exchange
 * is and gets — inspection, verdicts, annotations, the response's framing to the client,
 * the log entry — is exchange.ts's to decide.
 */

/** What a client connection needs from the proxy that owns it. */
export interface ConnectionHooks {
  readonly settings: ConnectionSettings;
  readonly inspectors: readonly Inspector[];
  /** Some inspector has `inspectResponse`: response heads wait for it. Known once, not per response. */
  readonly inspectsResponses: boolean;
  readonly propagateRecords: boolean;
  readonly metrics: HttpProxyMetrics;
  readonly logger: Logger;
  emitEvent(event: HttpProxyOwnEvent): void;
  /** Whether anyone wants the exchange log (a subscriber, or a log level that prints it). */
  wantsExchanges(failed: boolean): boolean;
  /** A finished exchange, for the exchange log. */
  onExchange(exchange: HttpExchange): void;
  countError(code: string): void;
}

export interface ConnectionSettings {
  readonly originTimeoutMs: number;
  readonly connectTimeoutMs: number;
  readonly maxHeaderSize: number;
  readonly headersTimeoutMs: number;
  readonly idleTimeoutMs: number;
  /** Largest request body: a Content-Length or chunk sizes beyond it get a 413. */
  readonly maxBodySize: number;
}

/** How a client that sent a malformed request or got a closing answer may take to close its side. */
const CLIENT_CLOSE_GRACE_MS = 2000;
/** Body bytes of a pipelined request held while the request before it is served; the client is paused beyond. */
const HOLD_LIMIT = 64 * 1024;
/** Requests a client may pipeline ahead of the one being served before it is paused. */
const MAX_QUEUED = 16;

/**
 * What the connection does with the bytes the client sends. `requests`: parsed as requests.
 * `upgrade-pending`: an upgrade request's head was parsed; what follows is the upgraded
 * protocol's, held until the origin accepts (or declines). `tunnelled`: the relay owns the
 * socket. `refused`: a request was refused; nothing after it is parsed, and its answer
 * goes out once the exchanges before it are answered. `closing`: no more requests are
 * taken, the connection ends once the current exchange is done (`refused` is kept for the
 * turn a refused request still gets).
 */
type ClientInput =
  | { readonly state: 'requests' }
  | { readonly state: 'upgrade-pending'; readonly held: Buffer[]; bytes: number }
  | { readonly state: 'tunnelled' }
  | { readonly state: 'refused'; readonly refusal: Refusal }
  | { readonly state: 'closing'; readonly refusal: Refusal | undefined };

interface Refusal {
  readonly code: string;
  readonly status: number;
}

/**
 * One client connection that sniffed as HTTP/1.x: its requests are parsed with Node's
 * parser, inspected, forwarded to the origin over a connection from `connectOnward()`
 * (so the flow's redirect records go with them), and the responses relayed back, one exchange at a
 * time in order. Bodies stream both ways with backpressure; nothing is buffered whole.
 */
export class ClientConnection {
  private readonly socket: net.Socket;
  private readonly parser: HttpParser;
  /** Exchanges whose request head arrived, in order; the first is being served. */
  private readonly queue: Exchange[] = [];
  /** The exchange whose request is being parsed (the last in the queue). */
  private parsing: Exchange | undefined;
  private origin: OriginLeg | undefined;
  /** What the origin leg reports back: its responses' ends, failures, an accepted upgrade, its close. */
  private readonly legOwner: LegOwner;
  private sequence = 0;
  /** When the request head being received began, for the header timeout. */
  private headSince: number | undefined;
  private input: ClientInput = { state: 'requests' };
  /** The origin's socket buffer is full: the client is not read until it drains (flow control, not a state). */
  private originFull = false;
  /** The client half-closed its side: facts of the socket, whatever the state. */
  private clientEnded = false;
  private closed = false;
  /** CR and LF bytes seen before the first request line; undefined once it started. */
  private preamble: number | undefined = 0;
  /** Follows the size lines of the chunked request body being parsed. */
  private chunkGuard: ChunkSizeGuard | undefined;
  /** Cuts a client that does not close its side after our end (see endClient). */
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly conn: AcceptedConnection,
    private readonly info: ConnectionInfo,
    private readonly hooks: ConnectionHooks,
    private readonly onClosed: (connection: ClientConnection) => void,
  ) {
    this.socket = conn.socket;
    this.legOwner = {
      client: this.conn.socket,
      connectionId: this.info.id,
      logger: this.hooks.logger,
      inspectors: this.hooks.inspectors,
      inspectsResponses: this.hooks.inspectsResponses,
      originTimeoutMs: this.hooks.settings.originTimeoutMs,
      clientClosed: () => this.closed,
      tunnelled: () => this.input.state === 'tunnelled',
      fail: (exchange, code, error, status) => this.fail(exchange, code, error, status),
      responseDone: (exchange) => this.maybeFinish(exchange),
      openTunnel: (leg, head, rest) => this.openTunnel(leg, head, rest),
      legClosed: (leg) => {
        if (this.origin !== leg) return;
        this.origin = undefined;
        this.originFull = false; // its 'drain' will never come
        this.updateClientFlow();
      },
    };
    this.parser = createParser('request', hooks.settings.maxHeaderSize, {
      onBegin: () => (this.headSince = Date.now()),
      onHead: (head) => this.onRequestHead(head),
      onBody: (chunk) => this.onRequestBody(chunk),
      onComplete: () => this.onRequestComplete(),
    });
  }

  /** Starts serving, with the bytes the sniffer already read. */
  start(head: Buffer): void {
    this.socket.on('data', this.onData);
    this.socket.on('end', this.onEnd);
    // Errors end in 'close', where an unfinished exchange is reported.
    this.socket.on('error', (error: NodeJS.ErrnoException) => this.hooks.logger.debug({ err: error, connection: this.info.id }, 'client socket error'));
    this.socket.once('close', this.onClose);
    this.socket.setTimeout(this.hooks.settings.idleTimeoutMs, () => this.socket.destroy());
    // Heads and bodies are written as they come; Nagle would hold each small write for the
    // peer's delayed ACK (40 ms a request). Node's own http sockets turn it off too.
    this.socket.setNoDelay(true);
    // The header timeout runs from the first byte: a client that sends only empty lines gets its 408 too.
    this.headSince = Date.now();
    if (head.length > 0) this.onData(head);
    this.socket.resume();
  }

  /** Called by the proxy's sweep: a request head that takes too long gets a 408. */
  checkHeadDeadline(now: number): void {
    if (this.headSince === undefined || now - this.headSince < this.hooks.settings.headersTimeoutMs) return;
    this.headSince = undefined;
    // A pipelined head is answered after the responses before it.
    this.refuse(ProxyErrorCode.RequestTimeout, 408, `no request head within ${this.hooks.settings.headersTimeoutMs} ms`);
  }

  /** A request was refused: nothing after it is parsed; its answer waits for its turn. */
  private get refusal(): Refusal | undefined {
    const input = this.input;
    switch (input.state) {
      case 'refused':
      case 'closing':
        return input.refusal;
      case 'requests':
      case 'upgrade-pending':
      case 'tunnelled':
        return undefined;
      default:
        return unreachable(input);
    }
  }

  private readonly onData = (chunk: Buffer): void => {
    const input = this.input;
    switch (input.state) {
      case 'refused':
        return; // a request was refused: nothing after it is parsed
      case 'closing':
        if (input.refusal !== undefined || this.queue.length === 0) return; // answered with a close: what follows is dropped
        break;
      case 'upgrade-pending':
        return this.holdForTunnel(input, chunk);
      case 'requests':
        break;
      case 'tunnelled':
        return; // the relay reads from here on
      default:
        return unreachable(input);
    }
    if (this.preamble !== undefined && !this.countPreamble(chunk)) return;
    const origin = this.origin?.socket;
    origin?.cork();
    this.parse(chunk);
    origin?.uncork();
  };

  /**
   * Runs the parser over what the client sent. A chunked request's head pauses it, so the
   * chunk-size guard can start at the body's first byte; the guard sees each part of the
   * body before the parser does, so an oversized chunk is refused before its data goes on.
   */
  private parse(chunk: Buffer): void {
    let data = chunk;
    for (;;) {
      if (this.chunkGuard !== undefined && !this.chunkGuard.scan(data)) {
        return this.refuse(ProxyErrorCode.BodyTooLarge, 413, `chunk sizes over the bound of ${this.hooks.settings.maxBodySize} bytes`);
      }
      const consumed = this.parser.execute(data);
      if (isPause(consumed)) {
        if (this.refusal !== undefined) return; // the head was refused
        this.parser.resume();
        data = data.subarray(consumed.bytesParsed);
        continue;
      }
      if (isParserError(consumed)) return this.onParseError(consumed);
      // Only an upgrade head stops the parser short: the rest is the upgraded protocol's.
      if (consumed < data.length && this.input.state === 'upgrade-pending') this.holdForTunnel(this.input, data.subarray(consumed));
      return;
    }
  }

  /** Empty lines before the first request line: Node's parser would skip any number of them. */
  private countPreamble(chunk: Buffer): boolean {
    const { count, ended } = leadingEmptyBytes(chunk);
    this.preamble = (this.preamble ?? 0) + count;
    if (this.preamble > MAX_LEADING_EMPTY_BYTES) {
      this.refuse(ProxyErrorCode.LeadingEmptyLines, 400, `more than ${MAX_LEADING_EMPTY_BYTES} bytes of empty lines before the request line`);
      return false;
    }
    if (ended) this.preamble = undefined;
    return true;
  }

  /** Bytes of the upgraded protocol that arrive before the origin accepted the upgrade. */
  private holdForTunnel(input: ClientInput & { state: 'upgrade-pending' }, chunk: Buffer): void {
    input.held.push(chunk);
    input.bytes += chunk.length;
    this.updateClientFlow();
  }

  private onRequestHead(head: MessageHead): boolean | 'pause' {
    this.headSince = undefined;
    const headers = headersObject(head.rawHeaders);
    const refused = checkRequestFraming(head, headers, this.hooks.settings.maxBodySize);
    if (refused !== undefined) {
      this.refuse(refused.code, refused.status, refused.message);
      return 'pause'; // the parser stops here: no byte of its body is read
    }
    const exchange = exchangeOfHead(++this.sequence, head, headers, this.info);
    this.chunkGuard = exchange.framing === 'chunked' && !head.upgrade && exchange.rejection === undefined ? new ChunkSizeGuard(this.hooks.settings.maxBodySize) : undefined;
    this.hooks.metrics.requests.inc({ method: exchange.request.method });
    if (head.upgrade && this.input.state === 'requests') this.input = { state: 'upgrade-pending', held: [], bytes: 0 };
    this.parsing = exchange;
    this.queue.push(exchange);
    if (this.queue.length === 1) this.serve(exchange);
    else if (this.queue.length >= MAX_QUEUED) this.updateClientFlow();
    return this.chunkGuard === undefined ? false : 'pause';
  }

  private onRequestBody(chunk: Buffer): void {
    const exchange = this.parsing;
    if (exchange === undefined) return;
    exchange.requestBytes += chunk.length;
    const body = exchange.requestBody;
    switch (body.state) {
      case 'forwarding': {
        const leg = this.origin;
        if (leg !== undefined && !writeBody(leg.socket, chunk, exchange.framing)) this.waitForOriginDrain(leg.socket);
        return;
      }
      case 'holding':
        body.chunks.push(chunk);
        exchange.heldBytes += chunk.length;
        if (exchange.heldBytes >= HOLD_LIMIT) this.updateClientFlow();
        return;
      case 'discarding':
      case 'complete':
        return;
      default:
        return unreachable(body);
    }
  }

  private onRequestComplete(): void {
    const exchange = this.parsing;
    if (exchange === undefined) return;
    this.parsing = undefined;
    this.chunkGuard = undefined;
    if (exchange.requestBody.state === 'forwarding' && exchange.framing === 'chunked') this.origin?.socket.write(LAST_CHUNK);
    exchange.completeRequestBody();
    this.maybeFinish(exchange);
  }

  private waitForOriginDrain(origin: net.Socket): void {
    if (this.originFull) return;
    this.originFull = true;
    this.updateClientFlow();
    origin.once('drain', () => {
      this.originFull = false;
      this.updateClientFlow();
    });
  }

  /**
   * Reads from the client only while what it sends has somewhere to go: not while the
   * origin's socket is full, a pipelined request's held body or the bytes waiting for a
   * tunnel reached their bound, or too many requests wait their turn.
   */
  private updateClientFlow(): void {
    const input = this.input;
    if (input.state === 'tunnelled' || this.closed) return; // the relay, or nobody, reads from here on
    const parsing = this.parsing;
    const full =
      input.state !== 'closing' &&
      (this.originFull ||
        this.queue.length >= MAX_QUEUED ||
        (parsing !== undefined && parsing.requestBody.state === 'holding' && parsing.heldBytes >= HOLD_LIMIT) ||
        (input.state === 'upgrade-pending' && input.bytes >= HOLD_LIMIT));
    if (full && !this.socket.isPaused()) this.socket.pause();
    else if (!full && this.socket.isPaused()) this.socket.resume();
  }

  /** Serves the exchange at the head of the queue; a fault of the proxy's own fails that exchange only, visibly. */
  private serve(exchange: Exchange): void {
    this.begin(exchange).catch((error: unknown) => {
      this.hooks.logger.error({ err: error, connection: this.info.id }, 'internal error while serving an exchange');
      this.fail(exchange, ProxyErrorCode.Internal, asError(error), 502);
    });
  }

  /** Inspects the exchange at the head of the queue and sends it on, or answers it here. */
  private async begin(exchange: Exchange): Promise<void> {
    const { request } = exchange;
    const fault = headFault(exchange);
    if (fault !== undefined) {
      switch (fault.kind) {
        case 'refuse-head':
          return this.rejectHead(exchange, fault.rejection);
        case 'connect-method':
          this.hooks.countError(ProxyErrorCode.ConnectMethod);
          this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code: ProxyErrorCode.ConnectMethod, status: 501 });
          return this.answer(exchange, 501, 'CONNECT is not served by a transparent proxy', true);
        default:
          return unreachable(fault);
      }
    }
    let decision: Decision;
    try {
      const pending = decideRequest(this.hooks.inspectors, request);
      decision = pending instanceof Promise ? await pending : pending;
    } catch (error) {
      return this.fail(exchange, ProxyErrorCode.InspectorFailed, asError(error), 502);
    }
    if (this.closed || exchange.finished) return; // the client went, or its request was refused meanwhile
    exchange.decision = decision;
    this.hooks.metrics.verdicts.inc({ verdict: decision.action });
    const plan = planRequest(exchange, decision);
    switch (plan.kind) {
      case 'block':
        return this.answer(exchange, plan.status, plan.reason, plan.close);
      case 'inspector-failed':
        return this.fail(exchange, ProxyErrorCode.InspectorFailed, plan.error, 502);
      case 'forward':
        break;
      default:
        return unreachable(plan);
    }
    let leg: OriginLeg;
    try {
      leg = this.origin?.reuse === 'reusable' ? this.origin : await this.connectOrigin();
    } catch (error) {
      const code = errorCodeOf(error, ProxyErrorCode.OriginUnreachable);
      return this.fail(exchange, code, asError(error), code === 'COPROXY_CONNECT_TIMEOUT' ? 504 : 502);
    }
    if (this.closed) return;
    if (exchange.finished) {
      // Refused while the origin was being reached (its body broke off): nothing goes to it.
      leg.socket.destroy();
      return;
    }
    leg.current = exchange;
    leg.socket.cork();
    // Node's parser gives the head's bytes as latin1 strings: written back as latin1, a header
    // byte above 0x7f (obs-text) reaches the origin as it came, not re-encoded as two UTF-8
    // bytes the inspectors never saw.
    leg.socket.write(plan.head, 'latin1');
    const body = exchange.requestBody;
    switch (body.state) {
      case 'holding':
        for (const chunk of body.chunks) writeBody(leg.socket, chunk, exchange.framing);
        if (body.complete && exchange.framing === 'chunked') leg.socket.write(LAST_CHUNK);
        exchange.requestBody = body.complete ? { state: 'complete' } : { state: 'forwarding' };
        break;
      case 'forwarding':
      case 'discarding':
      case 'complete':
        break; // not held: nothing was kept to send
      default:
        unreachable(body);
    }
    leg.socket.uncork();
    if (exchange.heldBytes >= HOLD_LIMIT) this.updateClientFlow();
  }

  private async connectOrigin(): Promise<OriginLeg> {
    this.releaseOrigin();
    this.origin = undefined;
    const socket = await this.conn.connectOnward({ timeoutMs: this.hooks.settings.connectTimeoutMs, propagateRecords: this.hooks.propagateRecords });
    if (this.closed) {
      socket.destroy();
      throw Object.assign(new Error('the client closed the connection while the origin was being reached'), { code: ProxyErrorCode.ClientReset });
    }
    const leg = new OriginLeg(socket, this.legOwner);
    this.origin = leg;
    return leg;
  }

  /** The origin accepted the upgrade: its head goes to the client, then both ways are relayed as bytes. */
  private openTunnel(leg: OriginLeg, head: MessageHead, originRest: Buffer): void {
    const exchange = leg.current!;
    leg.message = { kind: 'final' };
    leg.current = undefined;
    leg.retire();
    const held = this.input.state === 'upgrade-pending' ? this.input.held : [];
    this.input = { state: 'tunnelled' };
    if (this.origin === leg) this.origin = undefined;
    const responseHead = upgradeResponseHead(exchange, head);
    // Our listeners go: from here the relay owns both sockets.
    leg.detach();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.setTimeout(0);
    const clientRest = Buffer.concat(held);
    exchange.responseProgress = { state: 'streaming' };
    this.socket.write(responseHead, 'latin1');
    if (originRest.length > 0) this.socket.write(originRest);
    if (clientRest.length > 0) leg.socket.write(clientRest);
    this.socket.resume();
    void relay(this.socket, leg.socket).then((result) => {
      exchange.tunnel = { bytesFromClient: clientRest.length + result.fromClient, bytesToClient: originRest.length + result.toClient };
      if (result.error !== undefined) exchange.failure = { code: errorCodeOf(result.error, ProxyErrorCode.RelayReset), message: result.error.message };
      exchange.requestBody = { state: 'complete' };
      exchange.responseProgress = { state: 'complete' };
      this.finish(exchange);
    });
  }

  /** An answer from the proxy itself. `close`: the connection ends after it. */
  private answer(exchange: Exchange, status: number, text: string, close: boolean): void {
    exchange.response ??= { status, headers: {} };
    exchange.responseBytes = Buffer.byteLength(text) + 1;
    exchange.discardRequestBody();
    exchange.responseProgress = { state: 'complete' };
    if (!close && exchange.reusable) {
      this.socket.write(localAnswer(status, text, exchange.request.httpVersion === '1.0' ? 'keep-alive' : undefined));
      if (exchange.heldBytes >= HOLD_LIMIT) this.updateClientFlow();
      return this.maybeFinish(exchange); // the rest of the request body is read and dropped
    }
    this.socket.write(localAnswer(status, text, 'close'));
    this.finish(exchange);
    this.endClient();
  }

  private fail(exchange: Exchange, code: string, error: Error, status: 502 | 504 | undefined): void {
    if (exchange.finished || exchange.failure !== undefined) return;
    exchange.failure = { code, message: error.message };
    this.hooks.countError(code);
    this.hooks.emitEvent({ type: 'exchange-failed', connectionId: this.info.id, code, message: error.message, ...(status !== undefined && { status }) });
    this.origin?.socket.destroy();
    if (status !== undefined && !exchange.headSent && !this.closed) {
      exchange.response = { status, headers: {} }; // replaces an origin's head the client never got
      return this.answer(exchange, status, failureText(status, code, error.message), true);
    }
    // The response had started (or the client is gone): the only honest signal left is cutting the connection.
    this.socket.destroy();
    this.finish(exchange);
  }

  /** A parsed head the canonical view refuses (a second Host, an https:// target…): 400, then the connection ends. */
  private rejectHead(exchange: Exchange, rejection: RequestViewError): void {
    this.hooks.countError(rejection.code);
    this.hooks.logger.warn({ code: rejection.code, status: rejection.status, connection: this.info.id, reason: rejection.message }, 'request refused');
    this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code: rejection.code, status: rejection.status });
    exchange.failure = { code: rejection.code, message: rejection.message };
    this.answer(exchange, rejection.status, failureText(rejection.status, rejection.code, rejection.message), true);
  }

  /**
   * A request that cannot be served as sent (the parser or a framing check refused it, or
   * its head came too slowly): nothing after it is parsed, it gets `status` once the
   * exchanges before it are answered, and the connection ends. A request whose body broke
   * off after its head (and maybe part of its body) went to the origin has the origin's
   * connection cut, so the origin never reads on past what the proxy parsed; if the
   * origin's answer had already begun, cutting the client's connection is all that is left.
   */
  private refuse(code: string, status: number, message: string): void {
    const input = this.input;
    if (this.refusal !== undefined || this.closed) return;
    switch (input.state) {
      case 'requests':
      case 'upgrade-pending': // the bytes held for a tunnel go: it will not open
        this.input = { state: 'refused', refusal: { code, status } };
        break;
      case 'closing':
        this.input = { state: 'closing', refusal: { code, status } };
        break;
      case 'tunnelled':
        return; // the relay owns the socket: nothing is parsed that could be refused
      case 'refused':
        return;
      default:
        return unreachable(input);
    }
    this.headSince = undefined;
    this.chunkGuard = undefined;
    this.hooks.countError(code);
    this.hooks.logger.warn({ code, status, reason: message, connection: this.info.id }, 'malformed request');
    this.hooks.emitEvent({ type: 'client-error', connectionId: this.info.id, code, status });
    const broken = this.parsing;
    if (broken !== undefined) {
      this.parsing = undefined;
      broken.failure = { code, message };
      broken.discardRequestBody();
      const active = this.queue[0] === broken;
      if (!active) this.queue.splice(this.queue.indexOf(broken), 1); // pipelined: it never started
      if (!broken.headSent) broken.response = { status, headers: {} };
      this.finish(broken);
      if (active) {
        const leg = this.origin;
        if (leg !== undefined) {
          leg.retire();
          leg.socket.destroy();
        }
        if (broken.headSent) {
          if (broken.responseDone) this.endClient();
          else this.socket.destroy();
          return;
        }
      }
    }
    if (this.queue.length === 0) this.sendRefusal();
  }

  private sendRefusal(): void {
    const { code, status } = this.refusal!;
    if (!this.socket.destroyed && !this.socket.writableEnded) this.socket.write(localAnswer(status, `${status} ${http.STATUS_CODES[status]}: ${code}`, 'close'));
    this.endClient();
  }

  private onParseError(error: ParserError): void {
    this.refuse(error.code, statusOfParseError(error.code), error.reason ?? error.message);
  }

  private maybeFinish(exchange: Exchange): void {
    if (!exchange.requestDone || !exchange.responseDone || exchange.finished) return;
    this.finish(exchange);
    if (!exchange.reusable || (this.input.state === 'closing' && this.input.refusal === undefined)) return this.endClient();
    const next = this.queue[0];
    if (next !== undefined) return this.serve(next);
    if (this.refusal !== undefined) return this.sendRefusal(); // the refused request's turn
    if (this.clientEnded) this.endSocket(); // the client half-closed after its last request: answered, now closed
  }

  /** Takes the exchange off the queue and gives it to the exchange log. */
  private finish(exchange: Exchange): void {
    if (exchange.finished) return;
    exchange.finished = true;
    if (this.queue[0] === exchange) this.queue.shift();
    if (this.queue.length === MAX_QUEUED - 1) this.updateClientFlow();
    if (this.hooks.wantsExchanges(exchange.failure !== undefined)) this.hooks.onExchange(exchangeLogEntry(this.info, exchange));
  }

  /**
   * Ends the client connection after what was written: what the client still sends is read
   * and dropped, so closing does not turn into a reset that could overtake the answer; a
   * client that never closes its side is cut after a grace period.
   */
  private endClient(): void {
    // Held bytes of an upgrade that will not happen go; a tunnel, once open, is the relay's.
    if (this.input.state !== 'tunnelled') this.input = { state: 'closing', refusal: this.refusal };
    this.releaseOrigin();
    if (this.socket.destroyed) return;
    this.endSocket();
    this.socket.resume();
    // Cleared on close: otherwise every connection closed by a `Connection: close` answer
    // stayed in memory for the whole grace period (4,000 of them at 2,000 a second).
    clearTimeout(this.graceTimer);
    this.graceTimer = setTimeout(() => this.socket.destroy(), CLIENT_CLOSE_GRACE_MS).unref();
  }

  /** The client is done with the origin leg: closed now, unless the origin is about to close it. */
  private releaseOrigin(): void {
    const leg = this.origin;
    if (leg === undefined || (leg.reuse === 'closing-by-origin' && leg.current === undefined)) return;
    leg.socket.destroy();
  }

  /**
   * Ends our side once. A second `end()` costs an ERR_STREAM_ALREADY_FINISHED with its
   * stack trace: a client that closes after a `Connection: close` answer hit it every time.
   */
  private endSocket(): void {
    if (!this.socket.writableEnded) this.socket.end();
  }

  private readonly onEnd = (): void => {
    this.clientEnded = true;
    const exchange = this.parsing;
    if (exchange !== undefined && !exchange.requestDone) {
      // The client closed its side before its request body was complete.
      this.failClientReset(exchange);
      return;
    }
    if (this.queue.length === 0) this.endSocket();
  };

  private readonly onClose = (): void => {
    this.closed = true;
    this.headSince = undefined;
    clearTimeout(this.graceTimer);
    this.onClosed(this);
    // 'close' comes on its own tick, never inside the parser's execute: safe to free it here,
    // and it must be freed, or it keeps this connection in memory for good (see close()).
    this.parser.close();
    if (this.input.state === 'tunnelled') return; // the relay reports the upgraded exchange
    this.releaseOrigin();
    const active = this.queue[0];
    if (active !== undefined && !active.finished) this.failClientReset(active);
    for (const dropped of this.queue.splice(0)) this.finish(dropped);
  };

  private failClientReset(exchange: Exchange): void {
    const message = exchange.headSent
      ? 'the client closed the connection before the response was complete'
      : 'the client closed the connection before the exchange was complete';
    this.fail(exchange, ProxyErrorCode.ClientReset, Object.assign(new Error(message), { code: ProxyErrorCode.ClientReset }), undefined);
  }
}

/** The status a parse error of Node's parser gets. */
function statusOfParseError(code: string): number {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return 431;
    case 'HPE_PAUSED_H2_UPGRADE': // HTTP/2's prior-knowledge preface: h2c cannot be inspected here
      return 505;
    default:
      return 400;
  }
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
