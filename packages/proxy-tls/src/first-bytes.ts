/**
 * What a connection's first bytes are, as far as coproxy-tls can tell: TLS (its own
 * protocol, which the ClientHello parser then reads), another protocol it positively
 * recognises (an HTTP/1.x request line, the HTTP/2 prior-knowledge preface), or neither.
 *
 * It runs on every connection's first bytes, so it is a byte scan with no allocation: the
 * common case (TLS) is decided by the first byte.
 */

/** The first bytes so far: which way they sort, or that more are needed to tell. */
export type FirstBytesKind =
  /** A handshake TLS record (byte 0 is 22): the ClientHello parser decides the rest. */
  | 'tls'
  /** An HTTP/1.x request line, up to its line ending. */
  | 'http1'
  /** The HTTP/2 connection preface (RFC 9113 §3.4). */
  | 'h2'
  /** Neither, and no byte that could follow would change that. */
  | 'unknown'
  /** A prefix of something recognisable: more bytes are needed. */
  | 'undecided';

/** How far a request line (and the empty lines before it) may run before the bytes count as unknown. */
export const MAX_REQUEST_LINE = 16_384;

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const HTTP_1 = Buffer.from('HTTP/1.', 'latin1');
const CR = 0x0d;
const LF = 0x0a;
const SP = 0x20;

/** RFC 9110 §5.6.2 tchar: the bytes a method token is made of. */
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TCHAR[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TCHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TCHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TCHAR[c] = 1;

/**
 * Sorts the first bytes of a connection. Pure; call it again with more bytes while it says
 * `undecided`. `unknown` is final: once the bytes cannot be a prefix of anything it
 * recognises, more bytes cannot make them so.
 */
export function classifyFirstBytes(head: Buffer): FirstBytesKind {
  if (head.length === 0) return 'undecided';
  if (head[0] === 0x16) return 'tls';
  if (head[0] === 0x50 /* P */) {
    const n = Math.min(head.length, H2_PREFACE.length);
    if (head.compare(H2_PREFACE, 0, n, 0, n) === 0) return n === H2_PREFACE.length ? 'h2' : 'undecided';
    // Otherwise it may still be an HTTP/1.x request whose method starts with P.
  }
  const kind = requestLine(head);
  return kind === 'undecided' && head.length >= MAX_REQUEST_LINE ? 'unknown' : kind;
}

/**
 * RFC 9112 §3: method SP request-target SP HTTP-version, then CRLF (or a bare LF, §2.2),
 * after any empty lines (§2.2: a server should ignore at least one). The target is one or
 * more visible ASCII characters: its syntax is the HTTP vendor's to judge.
 */
function requestLine(head: Buffer): 'http1' | 'unknown' | 'undecided' {
  const n = head.length;
  let i = 0;
  while (i < n && (head[i] === CR || head[i] === LF)) {
    if (head[i] === CR) {
      if (i + 1 === n) return 'undecided';
      if (head[i + 1] !== LF) return 'unknown';
      i += 2;
    } else {
      i++;
    }
  }
  const method = i;
  while (i < n && TCHAR[head[i]!] === 1) i++;
  if (i === n) return 'undecided';
  if (i === method || head[i] !== SP) return 'unknown';
  const target = ++i;
  while (i < n && head[i]! > SP && head[i]! < 0x7f) i++;
  if (i === n) return 'undecided';
  if (i === target || head[i] !== SP) return 'unknown';
  i++;
  for (let k = 0; k < HTTP_1.length; k++, i++) {
    if (i === n) return 'undecided';
    if (head[i] !== HTTP_1[k]) return 'unknown';
  }
  if (i === n) return 'undecided';
  if (head[i]! < 0x30 || head[i]! > 0x39) return 'unknown';
  i++;
  if (i === n) return 'undecided';
  if (head[i] === LF) return 'http1';
  if (head[i] !== CR) return 'unknown';
  if (i + 1 === n) return 'undecided';
  return head[i + 1] === LF ? 'http1' : 'unknown';
}
