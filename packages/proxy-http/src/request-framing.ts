import type { IncomingHttpHeaders } from 'node:http';
import { ProxyErrorCode } from './errors.js';
import { FRAMING_FIELDS } from './http-head.js';
import type { MessageHead } from './node-http-parser.js';

/**
 * Checks on a request head that Node's parser accepted but the proxy must not forward as
 * it is: where the origin could frame or route the request other than the proxy did, or
 * where RFC 9112 says the framing is faulty. Each is refused before anything reaches the
 * origin. Node's parser has already refused the rest (Content-Length with
 * Transfer-Encoding, a coding list that does not end in chunked, bad or duplicate
 * Content-Lengths, bad chunk sizes).
 */
export interface Refusal {
  readonly code: RefusalCode;
  readonly status: 400 | 413 | 501 | 505;
  readonly message: string;
}

export type RefusalCode =
  | typeof ProxyErrorCode.HttpVersion
  | typeof ProxyErrorCode.ConnectionNamesFraming
  | typeof ProxyErrorCode.TransferEncodingInvalid
  | typeof ProxyErrorCode.TransferCodingUnknown
  | typeof ProxyErrorCode.UpgradeWithChunkedBody
  | typeof ProxyErrorCode.BodyTooLarge;

/**
 * Codings a request may apply before chunked (RFC 9110 §8.4.1, §18.7 registry): the body
 * bytes go on as they are, so the proxy need not decode them, but a coding it does not
 * know is one the origin may not know either (RFC 9112 §6.1: 501).
 */
const KNOWN_CODINGS = new Set(['gzip', 'x-gzip', 'deflate', 'compress', 'x-compress']);

/**
 * A Connection option list naming one of `FRAMING_FIELDS` (RFC 9110 §7.6.1: a list of
 * tokens, optional whitespace around commas). One regular expression rather than a split:
 * it runs on every request that has a Connection header, and allocates nothing.
 */
const NAMES_FRAMING_FIELD = new RegExp(`(?:^|,)[ \\t]*(${[...FRAMING_FIELDS].join('|')})[ \\t]*(?=,|$)`, 'i');

/** Refuses what the parser let through and the proxy will not forward; `undefined` when the head may go on. */
export function checkRequestFraming(head: MessageHead, headers: IncomingHttpHeaders, maxBodySize: number): Refusal | undefined {
  // Node's parser takes HTTP/0.9 (no headers, no framing) and 2.0 request lines; the proxy speaks 1.x.
  if (head.versionMajor !== 1 || head.versionMinor > 1) {
    return { code: ProxyErrorCode.HttpVersion, status: 505, message: `HTTP/${head.versionMajor}.${head.versionMinor} is not served` };
  }
  // Connection lists fields that end at this hop; a framing or routing field listed there
  // would be stripped while the body it frames is forwarded (request smuggling).
  const connection = headers.connection;
  const named = connection === undefined ? null : NAMES_FRAMING_FIELD.exec(connection);
  if (named !== null) {
    return { code: ProxyErrorCode.ConnectionNamesFraming, status: 400, message: `Connection names ${named[1]!.toLowerCase()}, which frames or routes the request` };
  }
  const encoding = headers['transfer-encoding'];
  if (encoding !== undefined) {
    const refusal = checkTransferEncoding(encoding, head.versionMinor);
    if (refusal !== undefined) return refusal;
    // An upgrade's bytes after the head go through the tunnel unparsed, so a chunked body
    // there would escape the chunk-size bound; no upgrade in use sends one (WebSocket
    // handshakes are bodiless GETs).
    if (head.upgrade && head.method !== 'CONNECT') {
      return { code: ProxyErrorCode.UpgradeWithChunkedBody, status: 400, message: 'an Upgrade request with a chunked body' };
    }
  }
  const length = headers['content-length'];
  // The parser has checked it is digits that fit 64 bits. Number() of a longer string
  // rounds, but never to or below a bound that is a safe integer.
  if (length !== undefined && Number(length) > maxBodySize) {
    return { code: ProxyErrorCode.BodyTooLarge, status: 413, message: `Content-Length ${length} is over the bound of ${maxBodySize} bytes` };
  }
  return undefined;
}

/** The Connection values nearly every request carries, which name no other field: no work for them. */
const PLAIN_CONNECTION = /^[ \t]*(?:keep-alive|close|upgrade)[ \t]*$/i;

/**
 * Removes from the headers the rules and inspectors see those the Connection header names
 * (RFC 9110 §7.6.1): they are not forwarded, so the origin never acts on them, and a rule
 * must not either (a rule that blocks requests without `Authorization` would otherwise pass
 * one whose `Authorization` the origin never gets). Framing fields named there are refused
 * before this; an upgrade keeps its `Upgrade`, which is forwarded.
 */
export function dropConnectionOptions(headers: IncomingHttpHeaders, upgrade: boolean): void {
  const connection = headers.connection;
  if (connection === undefined || PLAIN_CONNECTION.test(connection)) return;
  for (const option of connection.split(',')) {
    const name = option.trim().toLowerCase();
    if (name === 'connection' || (upgrade && name === 'upgrade')) continue;
    delete headers[name];
  }
}

function checkTransferEncoding(encoding: string, versionMinor: number): Refusal | undefined {
  const invalid = (message: string): Refusal => ({ code: ProxyErrorCode.TransferEncodingInvalid, status: 400, message });
  // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
  if (versionMinor === 0) return invalid('Transfer-Encoding in an HTTP/1.0 request');
  // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
  const codings = encoding
    .split(',')
    .map((coding) => coding.trim().toLowerCase())
    .filter((coding) => coding !== '');
  // RFC 9112 §6.3: chunked must be last, and only there (§6.1), or the length is unknowable.
  if (codings.length === 0 || codings[codings.length - 1] !== 'chunked' || codings.indexOf('chunked') !== codings.length - 1) {
    return invalid(`Transfer-Encoding '${encoding}' does not end in one chunked`);
  }
  const unknown = codings.find((coding, i) => i < codings.length - 1 && !KNOWN_CODINGS.has(coding));
  if (unknown !== undefined) return { code: ProxyErrorCode.TransferCodingUnknown, status: 501, message: `transfer coding '${unknown}' is not known` };
  return undefined;
}

/** Hex digit values, -1 for any other byte. */
const HEX = (() => {
  const table = new Int8Array(256).fill(-1);
  for (let d = 0; d < 16; d++) {
    table['0123456789abcdef'.charCodeAt(d)] = d;
    table['0123456789ABCDEF'.charCodeAt(d)] = d;
  }
  return table;
})();

/**
 * Bounds the chunk sizes a chunked request body declares, which Node's parser takes up to
 * 2^64 - 1 and does not report. It follows the body's size lines only: chunk data is
 * stepped over by its length, never read, and everything it skips (extensions, the CRLF
 * after data, trailers) is Node's parser's to validate. Sizes are summed, so a body whose
 * declared chunks together pass `maxBodySize` is refused at the size line that passes it,
 * before that chunk's data is forwarded.
 *
 * It is fed the same bytes as the parser, starting at the body's first byte, and stops
 * following at the last chunk (size 0).
 */
export class ChunkSizeGuard {
  private state: 'size' | 'line' | 'data' | 'data-end' | 'done' = 'size';
  /** The size being read. */
  private size = 0;
  /** Bytes left of the chunk data, or of the CRLF after it. */
  private remaining = 0;
  /** Sizes declared so far. */
  private declared = 0;

  constructor(private readonly maxBodySize: number) {}

  /** `false` at the first size line that takes the body past the bound. */
  scan(data: Buffer): boolean {
    let i = 0;
    while (i < data.length) {
      switch (this.state) {
        case 'size': {
          const digit = HEX[data[i]!]!;
          if (digit < 0) {
            this.state = 'line'; // an extension or the line end (or junk, which the parser refuses)
            break;
          }
          this.size = this.size * 16 + digit;
          if (this.declared + this.size > this.maxBodySize) return false;
          i++;
          break;
        }
        case 'line': {
          const lf = data.indexOf(0x0a, i);
          if (lf < 0) return true;
          i = lf + 1;
          if (this.size === 0) {
            this.state = 'done';
            return true;
          }
          this.declared += this.size;
          this.remaining = this.size;
          this.size = 0;
          this.state = 'data';
          break;
        }
        case 'data':
        case 'data-end': {
          const step = Math.min(this.remaining, data.length - i);
          this.remaining -= step;
          i += step;
          if (this.remaining > 0) break;
          if (this.state === 'data') {
            this.state = 'data-end';
            this.remaining = 2; // the CRLF after the data; the parser refuses anything else
          } else {
            this.state = 'size';
          }
          break;
        }
        case 'done':
          return true;
        default:
          return unreachable(this.state);
      }
    }
    return true;
  }
}

function unreachable(value: never): never {
  throw new Error(`unreachable: ${String(value)}`);
}
