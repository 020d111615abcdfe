import http, { type IncomingHttpHeaders } from 'node:http';
import { errorCodeOf } from '@coproxy/core';
import { type RequestViewError, canonicalRequest } from './canonical-request.js';
import { ProxyErrorCode } from './errors.js';
import type { HttpExchange } from './events.js';
import { offersH2c, withoutH2cUpgrade } from './h2c-upgrade.js';
import { type Framing, endToEndHeaders, framingOf, headersObject, serializeHead } from './http-head.js';
import { type ConnectionInfo, type Decision, type Inspector, type RequestInfo, type ResponseInfo, decide } from './inspector.js';
import type { MessageHead } from './node-http-parser.js';
import { dropConnectionOptions } from './request-framing.js';

/**
 * The exchange concern: one request and its response as the proxy judges them — the
 * inspection, the verdict and its annotations, what the origin is sent, how its answer is
 * passed on, and the log entry. No socket here: client-connection.ts moves the bytes and
 * asks these functions what to do.
 */

/**
 * Where the request body's bytes go, and whether all of it came. A body is held until the
 * origin leg is ready (`holding`), then goes to the origin (`forwarding`), or nowhere after
 * a local answer or a refusal (`discarding`); `complete` once its last byte was read.
 */
export type RequestBody =
  | { readonly state: 'holding'; readonly chunks: Buffer[]; readonly complete: boolean }
  | { readonly state: 'forwarding' }
  | { readonly state: 'discarding' }
  | { readonly state: 'complete' };

/**
 * How far the response to the client got. `inspecting`: the origin's head waits for the
 * response inspectors, its body chunks are held (`complete` once the origin's response
 * ended meanwhile). From `streaming` on the head went to the client: a failure can only
 * cut the connection.
 */
export type ResponseProgress =
  | { readonly state: 'awaiting' }
  | { readonly state: 'inspecting'; readonly chunks: Buffer[]; readonly complete: boolean }
  | { readonly state: 'streaming' }
  | { readonly state: 'complete' };

const ALLOW: Decision = Object.freeze({ action: 'allow', by: Object.freeze([]) });

/** One request and its response, from the request head to the end of both. */
export class Exchange {
  readonly startedAt = Date.now();
  requestBody: RequestBody = { state: 'holding', chunks: [], complete: false };
  responseProgress: ResponseProgress = { state: 'awaiting' };
  /** Request body bytes held so far (they count against the hold limit even once sent on). */
  heldBytes = 0;
  requestBytes = 0;
  responseBytes = 0;
  /** The log entry was written and the exchange left the queue. */
  finished = false;
  decision: Decision | undefined;
  /** The origin's response head, or the proxy's own answer's status. */
  response: ResponseInfo | undefined;
  /** How the response body goes to the client. */
  toClient: Framing = 'none';
  /** The client may send another request after this one. */
  reusable: boolean;
  failure: { code: string; message: string } | undefined;
  tunnel: { bytesFromClient: number; bytesToClient: number } | undefined;

  constructor(
    readonly sequence: number,
    readonly request: RequestInfo,
    readonly rawHeaders: string[],
    /** The request body's framing towards the origin (the same as the client's). */
    readonly framing: Framing,
    keepAlive: boolean,
    /** Why the head is answered 400 instead of forwarded (canonical-request.ts), in its turn. */
    readonly rejection: RequestViewError | undefined,
  ) {
    this.reusable = keepAlive && !request.upgrade;
  }

  /** The whole request body was read from the client. */
  get requestDone(): boolean {
    const body = this.requestBody;
    switch (body.state) {
      case 'holding':
        return body.complete;
      case 'forwarding':
      case 'discarding':
        return false;
      case 'complete':
        return true;
      default:
        return unreachable(body);
    }
  }

  /** The response head went to the client: a failure from here on can only cut the connection. */
  get headSent(): boolean {
    const progress = this.responseProgress;
    switch (progress.state) {
      case 'awaiting':
      case 'inspecting':
        return false;
      case 'streaming':
      case 'complete':
        return true;
      default:
        return unreachable(progress);
    }
  }

  get responseDone(): boolean {
    return this.responseProgress.state === 'complete';
  }

  /** The last byte of the request body was read. */
  completeRequestBody(): void {
    const body = this.requestBody;
    switch (body.state) {
      case 'holding':
        this.requestBody = { state: 'holding', chunks: body.chunks, complete: true };
        return;
      case 'forwarding':
      case 'discarding':
      case 'complete':
        this.requestBody = { state: 'complete' };
        return;
      default:
        return unreachable(body);
    }
  }

  /** What is held and what is still to come of the request body is dropped (a local answer, a refusal, an early response). */
  discardRequestBody(): void {
    if (!this.requestDone) this.requestBody = { state: 'discarding' };
    else this.requestBody = { state: 'complete' };
  }
}

/**
 * The exchange of a request head that passed the framing checks: the one view the
 * inspectors evaluate and the origin is sent (canonical-request.ts), without the
 * connection options the client's Connection header named.
 */
export function exchangeOfHead(sequence: number, parsed: MessageHead, headers: IncomingHttpHeaders, connection: ConnectionInfo): Exchange {
  // `Upgrade: h2c` is not carried out: the request goes on as HTTP/1.1 (h2c-upgrade.ts).
  const head = parsed.upgrade && parsed.method !== 'CONNECT' && offersH2c(headers) ? withoutH2cUpgrade(parsed, headers) : parsed;
  dropConnectionOptions(headers, head.upgrade);
  const view = canonicalRequest(head, headers);
  const request: RequestInfo = {
    method: head.method,
    url: head.url,
    target: view.target,
    path: view.path,
    paths: view.paths,
    host: view.host,
    port: view.port,
    authority: view.authority,
    httpVersion: `${head.versionMajor}.${head.versionMinor}`,
    headers: view.headers,
    connection,
    upgrade: head.upgrade && head.method !== 'CONNECT',
  };
  return new Exchange(sequence, request, view.rawHeaders, framingOf(view.headers, 'none'), head.keepAlive, view.rejection);
}

/** What is wrong with a request head whatever the inspectors say: it is answered here, in its turn. */
export type HeadFault = { readonly kind: 'refuse-head'; readonly rejection: RequestViewError } | { readonly kind: 'connect-method' };

export function headFault(exchange: Exchange): HeadFault | undefined {
  if (exchange.rejection !== undefined) return { kind: 'refuse-head', rejection: exchange.rejection };
  // A transparent proxy sees what clients send their origins; CONNECT is for explicit proxies.
  if (exchange.request.method === 'CONNECT') return { kind: 'connect-method' };
  return undefined;
}

/**
 * The inspectors' decision. Without inspectors nothing can say otherwise: allow, without a
 * turn of the event loop (so a request is forwarded within the read that brought it).
 */
export function decideRequest(inspectors: readonly Inspector[], request: RequestInfo): Decision | Promise<Decision> {
  return inspectors.length === 0 ? ALLOW : decide(inspectors, request);
}

/** What a decision makes of the exchange: a local answer, or the head the origin is sent. */
export type RequestPlan =
  | { readonly kind: 'block'; readonly status: number; readonly reason: string; readonly close: boolean }
  | { readonly kind: 'forward'; readonly head: string }
  | { readonly kind: 'inspector-failed'; readonly error: Error };

export function planRequest(exchange: Exchange, decision: Decision): RequestPlan {
  const { request } = exchange;
  switch (decision.action) {
    case 'block':
      return { kind: 'block', status: decision.status >= 400 && decision.status <= 599 ? decision.status : 403, reason: decision.reason, close: request.upgrade };
    case 'allow':
    case 'annotate':
      break;
    default:
      return unreachable(decision);
  }
  try {
    const headers = endToEndHeaders(exchange.rawHeaders, decision.action === 'annotate' ? decision.headers : undefined, request.upgrade);
    // A client that closes after this exchange: the origin is told too, and closes first.
    const connection = exchange.reusable || request.upgrade ? undefined : 'close';
    return { kind: 'forward', head: serializeHead(`${request.method} ${request.target} HTTP/1.1`, headers, exchange.framing, connection, request.headers['transfer-encoding']) };
  } catch (error) {
    return { kind: 'inspector-failed', error: asError(error) }; // an annotation that is no valid header
  }
}

/** What an origin's response head makes of the exchange. */
export type ResponsePlan =
  /** 100 Continue, 103 Early Hints: passed on (`head`, to an HTTP/1.1 client still waiting), the final answer follows. */
  | { readonly kind: 'informational'; readonly head: string | undefined }
  /** The origin accepted the upgrade the client asked for: a tunnel follows. */
  | { readonly kind: 'upgrade' }
  /** A 101 nobody asked for. */
  | { readonly kind: 'unasked-upgrade' }
  /**
   * The final response: `head` for the client; `noBody` whether one follows; `contentLength`
   * when the body is passed on as it is, delimited by the origin's Content-Length.
   */
  | { readonly kind: 'final'; readonly head: string; readonly noBody: boolean; readonly contentLength: number | undefined; readonly keepAlive: boolean };

/** Notes the origin's head on the exchange and decides how its response goes to the client. */
export function planResponse(exchange: Exchange, head: MessageHead): ResponsePlan {
  const { request } = exchange;
  if (head.status >= 100 && head.status < 200 && head.status !== 101) {
    const passOn = request.httpVersion === '1.1' && !exchange.headSent;
    return { kind: 'informational', head: passOn ? serializeHead(`HTTP/1.1 ${head.status} ${head.statusMessage}`, endToEndHeaders(head.rawHeaders), 'none') : undefined };
  }
  if (head.status === 101) return request.upgrade ? { kind: 'upgrade' } : { kind: 'unasked-upgrade' };
  const headers = headersObject(head.rawHeaders);
  exchange.response = { status: head.status, headers };
  const noBody = request.method === 'HEAD' || head.status === 204 || head.status === 304;
  const fromOrigin = noBody ? 'none' : framingOf(headers, 'close');
  // A body of unknown length goes chunked to an HTTP/1.1 client (which can then keep its
  // connection even when the origin delimited the body by closing), and delimited by the
  // close to an HTTP/1.0 one, which knows no chunks.
  const unknownLength = fromOrigin === 'chunked' || fromOrigin === 'close';
  exchange.toClient = unknownLength ? (request.httpVersion === '1.1' ? 'chunked' : 'close') : fromOrigin;
  // An upgrade the origin declined: its answer is passed on, then the connection closes.
  if (exchange.toClient === 'close' || request.upgrade) exchange.reusable = false;
  const connection = !exchange.reusable ? 'close' : request.httpVersion === '1.0' ? 'keep-alive' : undefined;
  const codings = noBody ? undefined : headers['transfer-encoding'];
  return {
    kind: 'final',
    head: serializeHead(`HTTP/1.1 ${head.status} ${head.statusMessage}`, endToEndHeaders(head.rawHeaders), exchange.toClient, connection, codings),
    noBody,
    contentLength: fromOrigin === 'length' ? Number(headers['content-length']) : undefined,
    keepAlive: head.keepAlive,
  };
}

/** The head of the response to an accepted upgrade, as the client gets it; notes it on the exchange. */
export function upgradeResponseHead(exchange: Exchange, head: MessageHead): string {
  exchange.response = { status: head.status, headers: headersObject(head.rawHeaders) };
  return serializeHead(`HTTP/1.1 ${head.status} ${head.statusMessage}`, endToEndHeaders(head.rawHeaders, undefined, true), 'none');
}

/** Runs the response inspectors over the origin's head, in order. */
export async function inspectResponse(inspectors: readonly Inspector[], exchange: Exchange): Promise<void> {
  for (const inspector of inspectors) await inspector.inspectResponse?.(exchange.request, exchange.response!);
}

/** Which code an origin leg that broke gets: before its response head the client gets a 502, after it only a cut. */
export function originBrokeCode(exchange: Exchange, error: Error): string {
  return exchange.response === undefined ? errorCodeOf(error, ProxyErrorCode.OriginUnreachable) : ProxyErrorCode.OriginReset;
}

/** The body of an error answer: the client learns what went wrong, not just that something did. */
export function failureText(status: number, code: string, message: string): string {
  return `${status} ${http.STATUS_CODES[status]}: ${code} (${message})`;
}

/** The exchange log's entry for a finished exchange. */
export function exchangeLogEntry(connection: ConnectionInfo, exchange: Exchange): HttpExchange {
  const { request } = exchange;
  return {
    kind: request.upgrade ? 'upgrade' : 'http',
    protocol: 'h1',
    connection,
    sequence: exchange.sequence,
    request: { method: request.method, url: request.url, host: request.host, headers: request.headers, bodyBytes: exchange.requestBytes },
    ...(exchange.response !== undefined && {
      response: { status: exchange.response.status, headers: exchange.response.headers, bodyBytes: exchange.responseBytes },
    }),
    ...(exchange.decision !== undefined && { decision: exchange.decision }),
    ...(exchange.tunnel !== undefined && { tunnel: exchange.tunnel }),
    ...(exchange.failure !== undefined && { error: exchange.failure }),
    startedAt: exchange.startedAt,
    durationMs: Date.now() - exchange.startedAt,
  };
}

export function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${JSON.stringify(value)}`);
}
