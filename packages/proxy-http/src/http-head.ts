import http, { type IncomingHttpHeaders } from 'node:http';
import type net from 'node:net';
import { AnnotationRefusedError } from './errors.js';

/** How a message's body is delimited on the wire (RFC 9112 §6). */
export type Framing = 'chunked' | 'length' | 'none' | 'close';

/** A coding list whose last coding is chunked (RFC 9112 §6.1: chunked is always last). */
const CHUNKED_LAST = /(?:^|,)\s*chunked\s*$/i;

/** The headers a proxy never forwards as they are: they describe one hop (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'transfer-encoding']);

/**
 * Fields that decide how a message is framed or where it goes: a Connection header may
 * not make them hop-by-hop. A request that tries is refused; in a response they are kept,
 * so that the client frames the body as the proxy did.
 */
export const FRAMING_FIELDS: ReadonlySet<string> = new Set(['content-length', 'transfer-encoding', 'host']);

/** Duplicates of these are dropped, the first kept, as Node's IncomingMessage does. */
const SINGLE_VALUED = new Set([
  'age', 'authorization', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host', 'if-modified-since',
  'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'referer', 'retry-after',
  'server', 'user-agent',
]);

/** Raw header pairs as Node's `IncomingMessage.headers` shows them: lower-case names, duplicates merged. */
export function headersObject(raw: readonly string[]): IncomingHttpHeaders {
  const headers: Record<string, string | string[]> = {};
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    const value = raw[i + 1]!;
    const seen = headers[name];
    if (name === 'set-cookie') {
      if (seen === undefined) headers[name] = [value];
      else (seen as string[]).push(value);
    } else if (seen === undefined) {
      headers[name] = value;
    } else if (!SINGLE_VALUED.has(name)) {
      headers[name] = `${seen as string}${name === 'cookie' ? '; ' : ', '}${value}`;
    }
  }
  return headers;
}

/** How the body of a message with these headers is framed; `fallback` when neither header is there. */
export function framingOf(headers: IncomingHttpHeaders, fallback: 'none' | 'close'): Framing {
  const encoding = headers['transfer-encoding'];
  // The parser has already refused a request whose encoding does not end in chunked.
  if (encoding !== undefined) return CHUNKED_LAST.test(encoding) ? 'chunked' : 'close';
  return headers['content-length'] !== undefined ? 'length' : fallback;
}

/**
 * Raw header pairs minus hop-by-hop ones (and those the Connection header names, except
 * `FRAMING_FIELDS`), minus
 * those an annotation replaces, plus the annotations. `upgrade` keeps Connection and
 * Upgrade, which carry the handshake.
 */
export function endToEndHeaders(raw: readonly string[], annotations?: Readonly<Record<string, string>>, upgrade = false): string[] {
  let named: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'connection') {
      named ??= new Set();
      for (const token of raw[i + 1]!.split(',')) {
        const option = token.trim().toLowerCase();
        if (!FRAMING_FIELDS.has(option)) named.add(option);
      }
    }
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (annotations?.[lower] !== undefined) continue;
    const handshake = upgrade && (lower === 'connection' || lower === 'upgrade');
    if (!handshake && (HOP_BY_HOP.has(lower) || named?.has(lower) === true)) continue;
    out.push(name, raw[i + 1]!);
  }
  if (annotations !== undefined) {
    for (const [name, value] of Object.entries(annotations)) {
      // Throws ERR_INVALID_HTTP_TOKEN / ERR_INVALID_CHAR: an inspector cannot smuggle a line break upstream.
      http.validateHeaderName(name);
      http.validateHeaderValue(name, value);
      const lower = name.toLowerCase();
      if (FRAMING_FIELDS.has(lower) || HOP_BY_HOP.has(lower)) throw new AnnotationRefusedError(name);
      out.push(name, value);
    }
  }
  return out;
}

/**
 * A message head: the start line, the headers, this hop's framing and connection headers.
 * `codings`: the message's Transfer-Encoding as received; codings other than chunked
 * (gzip…) apply to the body bytes passed on, so they are kept, chunked last.
 */
export function serializeHead(
  startLine: string,
  headers: readonly string[],
  framing: Framing,
  connection?: 'close' | 'keep-alive',
  codings?: string,
): string {
  let head = `${startLine}\r\n`;
  for (let i = 0; i < headers.length; i += 2) {
    // Content-Length describes the framing: dropped when this hop frames the body otherwise.
    // Kept with no body at all: a response to HEAD, or a 304, tells the size it would have.
    if ((framing === 'chunked' || framing === 'close') && headers[i]!.length === 14 && headers[i]!.toLowerCase() === 'content-length') continue;
    head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  }
  if (framing === 'chunked') head += `Transfer-Encoding: ${withChunkedLast(codings)}\r\n`;
  else if (framing === 'close' && withoutChunked(codings) !== undefined) head += `Transfer-Encoding: ${withoutChunked(codings)}\r\n`;
  if (connection !== undefined) head += `Connection: ${connection}\r\n`;
  return `${head}\r\n`;
}

function withoutChunked(codings: string | undefined): string | undefined {
  const rest = codings?.replace(CHUNKED_LAST, '').trim();
  return rest === '' ? undefined : rest;
}

function withChunkedLast(codings: string | undefined): string {
  if (codings === undefined) return 'chunked';
  return CHUNKED_LAST.test(codings) ? codings : `${codings}, chunked`;
}

const CRLF = Buffer.from('\r\n');
/** Below this a chunk is copied into one buffer with its framing; above, written as three (one writev). */
const COPY_BELOW = 16 * 1024;

/** Writes one body chunk in the given framing; returns `socket.write`'s backpressure signal. */
export function writeBody(socket: net.Socket, chunk: Buffer, framing: Framing): boolean {
  if (framing !== 'chunked') return socket.write(chunk);
  if (chunk.length === 0) return true; // an empty chunk would end the body
  const size = Buffer.from(`${chunk.length.toString(16)}\r\n`, 'latin1');
  if (chunk.length < COPY_BELOW) return socket.write(Buffer.concat([size, chunk, CRLF], size.length + chunk.length + 2));
  socket.cork();
  socket.write(size);
  socket.write(chunk);
  const more = socket.write(CRLF);
  socket.uncork();
  return more;
}

/** The end of a chunked body (no trailers). */
export const LAST_CHUNK = '0\r\n\r\n';

/** A complete short answer the proxy gives itself: a block, a 502, a 400. */
export function localAnswer(status: number, text: string, connection: 'close' | 'keep-alive' | undefined): string {
  const body = `${text}\n`;
  const phrase = http.STATUS_CODES[status] ?? '';
  return (
    `HTTP/1.1 ${status} ${phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `${connection === undefined ? '' : `Connection: ${connection}\r\n`}\r\n${body}`
  );
}
