import { createRequire } from 'node:module';

/**
 * Node's own HTTP/1.1 parser (llhttp, the one `http.Server` uses), driven directly.
 *
 * Why not `http.Server` and `http.request`: a transparent proxy only needs each message's
 * head and its body bytes. Node's server and client wrap every message in streams
 * (IncomingMessage, ServerResponse, ClientRequest, an Agent), which cost three to four
 * times the CPU of the relaying itself (profiled: 120–170 µs per proxied request against
 * about 35 µs here). The parser is the same strict one, with the same limits and error
 * codes (`HPE_*`), so what it accepts and refuses does not change.
 *
 * `_http_common` is the module Node's http layer is built from; its `HTTPParser` has kept
 * this interface from Node 12 to 24. It is loaded once, here, so a Node that drops it
 * fails at start with a clear error rather than mid-request.
 */
interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | ParserError;
  finish(): ParserError | undefined;
  resume(): void;
  /** Emits the async-hooks destroy of the current message, for a parser kept for reuse. */
  free(): void;
  close(): void;
  [key: number]: unknown;
}

interface NativeParserClass {
  new (): NativeParser;
  readonly REQUEST: number;
  readonly RESPONSE: number;
  readonly kOnMessageBegin: number;
  readonly kOnHeaders: number;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
  readonly kLenientNone: number;
}

const common = loadHttpCommon();
const HTTPParser = common.HTTPParser;
const METHODS = common.methods;

function loadHttpCommon(): { HTTPParser: NativeParserClass; methods: readonly string[] } {
  const loaded = createRequire(import.meta.url)('_http_common') as Partial<{ HTTPParser: NativeParserClass; methods: readonly string[] }>;
  if (typeof loaded.HTTPParser !== 'function' || !Array.isArray(loaded.methods)) {
    throw new Error(`@coproxy/proxy-http needs Node's HTTP parser (_http_common.HTTPParser), which Node ${process.version} does not expose`);
  }
  return loaded as { HTTPParser: NativeParserClass; methods: readonly string[] };
}

/**
 * The chunk-size guard needs the parser to stop right after a head and say where (see
 * `HPE_PAUSED`). Checked once at load, so a Node whose binding behaves otherwise fails at
 * start, not by letting a chunked body pass unguarded.
 */
function checkPauseAfterHead(): void {
  const head = Buffer.from('POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'latin1');
  const parser = new HTTPParser();
  parser.initialize(HTTPParser.REQUEST, NO_RESOURCE, 1024, HTTPParser.kLenientNone);
  parser[HTTPParser.kOnHeadersComplete] = (): number => HPE_PAUSED;
  const paused = parser.execute(head);
  parser.close();
  const bodyStart = head.length - 5;
  if (!isPause(paused) || paused.bytesParsed !== bodyStart) {
    throw new Error(`@coproxy/proxy-http needs Node's HTTP parser to pause after a request head, which Node ${process.version} does not do as expected`);
  }
}

/** A parse failure as Node reports it: `code` is llhttp's (`HPE_INVALID_METHOD`, `HPE_HEADER_OVERFLOW`…). */
export interface ParserError extends Error {
  readonly code: string;
  readonly bytesParsed?: number;
  readonly reason?: string;
}

export interface MessageHead {
  /** Requests only. */
  readonly method: string;
  /** Requests only: the request target as sent. */
  readonly url: string;
  /** Responses only. */
  readonly status: number;
  readonly statusMessage: string;
  readonly versionMajor: number;
  readonly versionMinor: number;
  /** Name, value, name, value… as received. */
  readonly rawHeaders: string[];
  /** An `Upgrade` request or a 101 response (llhttp also sets it for CONNECT). */
  readonly upgrade: boolean;
  /** What RFC 9112 §9.3 says of the connection after this message. */
  readonly keepAlive: boolean;
}

export interface ParserHandlers {
  /** The first byte of a message arrived. */
  onBegin?(): void;
  /**
   * `false`: the body follows as its headers say. `true`: the message has no body whatever
   * its headers say (a response to HEAD, a 304). `'pause'`: the parser stops right after
   * the head, and `execute` returns the pause (see `isPause`) with `bytesParsed` at the
   * body's first byte, so that the caller can look at the body's framing, or stop there.
   */
  onHead(head: MessageHead): boolean | 'pause';
  /** The body's bytes, de-chunked; `chunk` is the parser's own copy. */
  onBody(chunk: Buffer): void;
  onComplete(): void;
}

export interface HttpParser {
  /**
   * Parses what arrived. Returns the bytes consumed, which is less than `data.length`
   * only after an upgrade head (the rest belongs to the upgraded protocol), or the error.
   */
  execute(data: Buffer): number | ParserError;
  /** The peer closed: completes a close-delimited body, or says what was left unfinished. */
  finish(): ParserError | undefined;
  /** Forgets the message in progress: the next byte starts a new one. */
  reset(): void;
  /** Goes on after a pause that `onHead` asked for: the next `execute` starts at the body's first byte. */
  resume(): void;
  /**
   * Gives the native parser back, once its connection has closed: kept for the next
   * connection (its handlers dropped) or freed; any later call throws. Without it the
   * binding holds the parser by a strong global handle, so its handlers and all they reach
   * (the connection, its sockets, its exchanges) stay in memory for good: Node's own http
   * layer pools or closes each parser (`freeParser`), and so must every user of this one.
   * Never call it from inside one of the parser's own handlers.
   */
  close(): void;
}

/**
 * llhttp's HPE_PAUSED: returned from the head callback, it stops the parser after the head
 * (llhttp's documented contract for on_headers_complete; `execute` then reports the
 * position). The value has been 21 since llhttp 2 (Node 12) through llhttp 9 (Node 24).
 */
const HPE_PAUSED = 21;

/** No async hooks resource is tracked for these parsers; Node's own are per IncomingMessage. */
const NO_RESOURCE = Object.freeze({});

checkPauseAfterHead();

/**
 * Native parsers of closed connections, reused by new ones as Node's http layer reuses its
 * own (a FreeList of 1000 in `_http_common`): constructing one was 2% of a new
 * connection's CPU in the close-mode profile. `initialize` resets everything of the
 * previous message; the handlers are set anew by each user and cleared on release, so a
 * pooled parser keeps nothing of its last connection.
 */
const pool: NativeParser[] = [];
const POOL_SIZE = 1000;
const HANDLER_SLOTS = [HTTPParser.kOnMessageBegin, HTTPParser.kOnHeaders, HTTPParser.kOnHeadersComplete, HTTPParser.kOnBody, HTTPParser.kOnMessageComplete];

function release(parser: NativeParser): void {
  for (const slot of HANDLER_SLOTS) parser[slot] = undefined;
  if (pool.length >= POOL_SIZE) return parser.close();
  parser.free();
  pool.push(parser);
}

export function createParser(kind: 'request' | 'response', maxHeaderSize: number, handlers: ParserHandlers): HttpParser {
  const parser = pool.pop() ?? new HTTPParser();
  const initialize = (): void =>
    parser.initialize(kind === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, NO_RESOURCE, maxHeaderSize, HTTPParser.kLenientNone);
  initialize();
  // A head that spans several reads, or has many headers, arrives in parts before it completes.
  let partialHeaders: string[] = [];
  let partialUrl = '';
  // Always set, also when absent: a pooled parser must not call its last user's handler.
  parser[HTTPParser.kOnMessageBegin] = handlers.onBegin === undefined ? undefined : (): void => handlers.onBegin?.();
  parser[HTTPParser.kOnHeaders] = (headers: string[], url: string): void => {
    for (const item of headers) partialHeaders.push(item);
    partialUrl += url;
  };
  parser[HTTPParser.kOnHeadersComplete] = (
    versionMajor: number,
    versionMinor: number,
    headers: string[] | undefined,
    method: number | undefined,
    url: string | undefined,
    status: number | undefined,
    statusMessage: string | undefined,
    upgrade: boolean,
    keepAlive: boolean,
  ): number => {
    const rawHeaders = headers === undefined ? partialHeaders : partialHeaders.length === 0 ? headers : [...partialHeaders, ...headers];
    const target = partialUrl + (url ?? '');
    partialHeaders = [];
    partialUrl = '';
    const after = handlers.onHead({
      method: method === undefined ? '' : (METHODS[method] ?? ''),
      url: target,
      status: status ?? 0,
      statusMessage: statusMessage ?? '',
      versionMajor,
      versionMinor,
      rawHeaders,
      upgrade,
      keepAlive,
    });
    return after === 'pause' ? HPE_PAUSED : after ? 1 : 0;
  };
  // Node 20–24 pass the body as one Buffer; older versions passed (buffer, start, length).
  parser[HTTPParser.kOnBody] = (buffer: Buffer, start?: number, length?: number): void =>
    handlers.onBody(start === undefined ? buffer : buffer.subarray(start, start + (length ?? 0)));
  parser[HTTPParser.kOnMessageComplete] = (): void => {
    // Trailers (headers after a chunked body) arrive through kOnHeaders; they are not forwarded.
    partialHeaders = [];
    partialUrl = '';
    handlers.onComplete();
  };
  let closed = false;
  const open = (): NativeParser => {
    if (closed) throw new Error('this HTTP parser was closed with its connection');
    return parser;
  };
  return {
    execute: (data) => open().execute(data),
    finish: () => open().finish(),
    reset: () => {
      open();
      partialHeaders = [];
      partialUrl = '';
      initialize();
    },
    resume: () => open().resume(),
    close: () => {
      if (closed) return;
      closed = true;
      release(parser);
    },
  };
}

/** The parser stopped where `onHead` asked it to: not an error; `bytesParsed` is where the body starts. */
export function isPause(value: number | ParserError | undefined): value is ParserError & { readonly bytesParsed: number } {
  return typeof value === 'object' && value.code === 'HPE_PAUSED';
}

export function isParserError(value: number | ParserError | undefined): value is ParserError {
  return typeof value === 'object';
}
