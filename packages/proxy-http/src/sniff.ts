import type net from 'node:net';

/**
 * What the first bytes of a connection say it is, sorted three ways (I6: a vendor forwards
 * only what it inspected):
 * - `http`: a byte a request could start with. From then on the connection is parsed as
 *   HTTP, strictly; what does not parse is answered with a 4xx, never relayed.
 * - `tls`: a TLS record, a protocol this vendor does not inspect but positively
 *   recognises. It is relayed: a TLS vendor later in the chain (or before it) is the one
 *   that looks inside.
 * - `unrecognised`: anything else, or a client that said nothing (`head` empty) within the
 *   sniff timeout, as server-first protocols (SMTP, MySQL) do. What happens to it is the
 *   proxy's `unrecognised` policy.
 */
export type Sniffed =
  | { readonly kind: 'http'; readonly head: Buffer }
  | { readonly kind: 'tls'; readonly head: Buffer }
  | { readonly kind: 'unrecognised'; readonly head: Buffer; readonly reason: 'bytes' | 'silent' }
  /** The client closed or failed before sending anything. */
  | { readonly kind: 'closed'; readonly error?: Error };

/** What `classify` can tell from the bytes so far. */
export type FirstBytes = 'http' | 'tls' | 'unrecognised' | 'undecided';

/**
 * Reads the first bytes and sorts them (see `Sniffed`). The socket is left paused with
 * nothing consumed: the bytes read are returned for the caller to replay.
 *
 * Only the start of a TLS record can leave the sort undecided (it needs six bytes): a
 * client that stops inside them is `unrecognised` at the timeout. A byte a request could
 * start with decides at once, so a client that sends `GE`, waits, then the rest, is HTTP:
 * it is never relayed for being slow, and the header timeout (408) applies to it.
 */
export function sniff(socket: net.Socket, timeoutMs: number): Promise<Sniffed> {
  return new Promise((resolve) => {
    let head: Buffer = Buffer.alloc(0);
    const finish = (result: Sniffed): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const verdict = classify(head);
      if (verdict === 'unrecognised') finish({ kind: verdict, head, reason: 'bytes' });
      else if (verdict !== 'undecided') finish({ kind: verdict, head });
    };
    const onEnd = (): void => finish(head.length === 0 ? { kind: 'closed' } : { kind: 'unrecognised', head, reason: 'bytes' });
    const onError = (error: Error): void => finish({ kind: 'closed', error });
    const timer = setTimeout(() => finish({ kind: 'unrecognised', head, reason: head.length === 0 ? 'silent' : 'bytes' }), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onError);
  });
}

/**
 * The bytes a request may start with: RFC 9110 §5.6.2 tchar, of which a method token is
 * made; CR and LF, the empty lines RFC 9112 §2.2 tells servers to skip; and the whitespace
 * RFC 9112 §3 lets a lenient parser take for SP (HTAB, VT, FF, SP itself), which some
 * origin might skip before a method. Under the `relay` policy, a request that only a
 * lenient origin would read must still not pass uninspected: it is parsed, and refused.
 */
const STARTS_REQUEST = (() => {
  const table = new Uint8Array(256);
  for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\r\n\t\v\f ") table[c.charCodeAt(0)] = 1;
  return table;
})();

/** TLS record type handshake (RFC 8446 §5.1). */
const TLS_HANDSHAKE = 0x16;
/** Handshake message type client_hello, the first message of every TLS connection. */
const TLS_CLIENT_HELLO = 0x01;
/** A plaintext record's length is at most 2^14 (RFC 8446 §5.1); a ClientHello's first record is plaintext. */
const TLS_MAX_PLAINTEXT = 16_384;

/**
 * Sorts the first bytes of a connection. `http` at the first byte that could start a
 * request: any method token, not only the methods Node's parser knows (`M-SEARCH`, an
 * extension method), leading empty lines or whitespace; the parser then accepts or
 * refuses it, with a status. `tls` for a handshake record (type 0x16, version 3.0–3.4, a length of 1 to
 * 2^14) that starts a ClientHello. `unrecognised` at the first byte that fits neither.
 */
export function classify(head: Buffer): FirstBytes {
  if (head.length === 0) return 'undecided';
  const first = head[0]!;
  if (STARTS_REQUEST[first] === 1) return 'http';
  if (first !== TLS_HANDSHAKE) return 'unrecognised';
  // Each byte is judged as soon as it arrives: a stream that leaves the pattern is sorted at once.
  if (head.length > 1 && head[1] !== 0x03) return 'unrecognised';
  if (head.length > 2 && head[2]! > 0x04) return 'unrecognised';
  if (head.length < 5) return 'undecided';
  const length = head.readUInt16BE(3);
  if (length === 0 || length > TLS_MAX_PLAINTEXT) return 'unrecognised';
  if (head.length < 6) return 'undecided';
  return head[5] === TLS_CLIENT_HELLO ? 'tls' : 'unrecognised';
}

/** Empty lines (CR and LF bytes) skipped before a request line, at most; more is a 400. Four CRLF lines. */
export const MAX_LEADING_EMPTY_BYTES = 8;

/**
 * How many CR and LF bytes open `chunk`, and whether something else follows them in it.
 * Node's parser skips any number of them; the proxy bounds them itself.
 */
export function leadingEmptyBytes(chunk: Buffer): { readonly count: number; readonly ended: boolean } {
  let i = 0;
  while (i < chunk.length && (chunk[i] === 0x0d || chunk[i] === 0x0a)) i++;
  return { count: i, ended: i < chunk.length };
}

/** HTTP/2's connection preface with prior knowledge (RFC 9113 §3.4), which a cleartext h2 client sends first. */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/**
 * Whether `head` is HTTP/2's preface: `yes` once all 24 bytes are there, `no` at the first
 * byte that differs, `undecided` while what came is a prefix of it.
 */
export function h2Preface(head: Buffer): 'yes' | 'no' | 'undecided' {
  const n = Math.min(head.length, H2_PREFACE.length);
  if (head.compare(H2_PREFACE, 0, n, 0, n) !== 0) return 'no';
  return n === H2_PREFACE.length ? 'yes' : 'undecided';
}

/**
 * Reads on from an `http` sniff until it is known whether the connection opens with
 * HTTP/2's preface. A `P` decides `http` at once (a method could start with it), so the
 * rest of the 24 bytes may still be on their way. Resolves with all the bytes read (the
 * socket left paused, nothing consumed) and `h2` when the preface came whole; a client
 * that stops or stalls part-way is left to the HTTP/1.1 parser (`h2` false; `ended` when the
 * client half-closed meanwhile, an 'end' the parser's reader must be told of).
 */
export function sniffPreface(socket: net.Socket, head: Buffer, timeoutMs: number): Promise<{ readonly h2: boolean; readonly head: Buffer; readonly ended: boolean }> {
  const verdict = h2Preface(head);
  if (verdict !== 'undecided') return Promise.resolve({ h2: verdict === 'yes', head, ended: false });
  return new Promise((resolve) => {
    let bytes = head;
    let ended = false;
    const finish = (h2: boolean): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.pause();
      resolve({ h2, head: bytes, ended });
    };
    const onData = (chunk: Buffer): void => {
      bytes = Buffer.concat([bytes, chunk]);
      const next = h2Preface(bytes);
      if (next !== 'undecided') finish(next === 'yes');
    };
    const onEnd = (): void => {
      ended = true; // the socket's 'end' is spent: the caller passes it on to whoever reads next
      finish(false);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.resume();
  });
}
