import type net from 'node:net';

/** What the first bytes of a connection say it is. */
export type Sniffed =
  | { readonly kind: 'http'; readonly head: Buffer }
  /** Anything else, or a client that waits for the server to speak first (`head` may be empty). */
  | { readonly kind: 'opaque'; readonly head: Buffer }
  /** The client closed or failed before sending anything. */
  | { readonly kind: 'closed'; readonly error?: Error };

/** Longest method token looked at; real ones are at most 7 characters (OPTIONS, CONNECT). */
const MAX_METHOD = 20;

/**
 * Reads the first bytes and decides whether they start an HTTP/1.x request: a method token
 * (upper-case letters) then a space. TLS (0x16), SSH banners, binary protocols fail at the
 * first byte. A client silent for `timeoutMs` may be waiting for a server-first protocol
 * (SMTP, FTP, MySQL), so it is passed through. The socket is left paused with nothing
 * consumed: the bytes read are returned for the caller to replay.
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
      if (verdict !== 'undecided') finish({ kind: verdict, head });
    };
    const onEnd = (): void => finish(head.length === 0 ? { kind: 'closed' } : { kind: 'opaque', head });
    const onError = (error: Error): void => finish({ kind: 'closed', error });
    const timer = setTimeout(() => finish({ kind: 'opaque', head }), timeoutMs);
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onError);
  });
}

/** `http` once a method token and a space are seen, `opaque` at the first byte that cannot start one. */
export function classify(head: Buffer): 'http' | 'opaque' | 'undecided' {
  const limit = Math.min(head.length, MAX_METHOD + 1);
  for (let i = 0; i < limit; i++) {
    const byte = head[i]!;
    if (byte === 0x20) return i > 0 ? 'http' : 'opaque';
    if (byte < 0x41 || byte > 0x5a) return 'opaque'; // not A-Z
  }
  return head.length > MAX_METHOD ? 'opaque' : 'undecided';
}
