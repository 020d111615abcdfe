import type net from 'node:net';
import { type ClientHello, ClientHelloError, parseClientHello } from './client-hello.js';
import { TlsErrorCode, TlsProxyError } from './errors.js';
import type { UnrecognisedReason } from './events.js';
import { classifyFirstBytes } from './first-bytes.js';

/** A connection's first bytes, sorted: a ClientHello, another protocol, or unrecognised (with why). */
export type FirstBytes =
  /** The client closed before a byte. */
  | { readonly kind: 'closed' }
  | { readonly kind: 'tls'; readonly hello: ClientHello; readonly bytes: Buffer }
  | { readonly kind: 'recognised'; readonly protocol: 'http1' | 'h2'; readonly head: Buffer }
  | { readonly kind: 'unrecognised'; readonly reason: UnrecognisedReason; readonly head: Buffer; readonly error?: ClientHelloError };

export interface PeekSettings {
  readonly sniffTimeoutMs: number;
  readonly helloTimeoutMs: number;
  readonly maxHelloBytes: number;
}

/**
 * Reads until the first bytes sort one way, and leaves the socket paused with nothing
 * consumed for anyone else: the bytes read are in the result, to replay. Timers: nothing
 * at all within `sniffTimeoutMs` is a silent client; after the first byte,
 * `helloTimeoutMs` (from the accept) bounds the rest: a TLS stream still incomplete then is
 * an error (`COPROXY_TLS_HELLO_TIMEOUT`), anything else still undecided is unrecognised.
 * Rejects also on a socket error.
 */
export function peekFirstBytes(socket: net.Socket, settings: PeekSettings): Promise<FirstBytes> {
  return new Promise((resolve, reject) => {
    // The bytes so far, joined only when there are enough to decide on: a hello sent a byte
    // per segment would otherwise be copied and parsed again from its start for every byte.
    let chunks: Buffer[] = [];
    let total = 0;
    let awaited = 1;
    const joined = (): Buffer => {
      if (chunks.length !== 1) chunks = [Buffer.concat(chunks, total)];
      return chunks[0]!;
    };
    let settled = false;
    const finish = (error: Error | undefined, value?: FirstBytes): void => {
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.pause();
      if (error !== undefined) reject(error);
      else resolve(value!);
    };
    const onData = (chunk: Buffer): void => {
      const first = total === 0;
      chunks.push(chunk);
      total += chunk.length;
      if (total >= awaited) decide(joined());
      // One timer per connection: after the first byte it is re-armed, once, for what is
      // left of helloTimeoutMs (a whole hello in the first segment never gets that far).
      if (first && !settled) {
        clearTimeout(timer);
        timer = setTimeout(onTimeout, Math.max(0, settings.helloTimeoutMs - (performance.now() - startedAt)));
      }
    };
    const decide = (buffer: Buffer): void => {
      const kind = classifyFirstBytes(buffer);
      switch (kind) {
        case 'undecided':
          awaited = buffer.length + 1;
          return;
        case 'http1':
        case 'h2':
          return finish(undefined, { kind: 'recognised', protocol: kind, head: buffer });
        case 'unknown':
          return finish(undefined, { kind: 'unrecognised', reason: 'unknown', head: buffer });
        case 'tls':
          try {
            const result = parseClientHello(buffer, settings.maxHelloBytes);
            if (result.done) finish(undefined, { kind: 'tls', hello: result.hello, bytes: buffer });
            else awaited = buffer.length + result.needed;
          } catch (error) {
            if (!(error instanceof ClientHelloError)) return finish(error as Error);
            finish(undefined, { kind: 'unrecognised', reason: 'malformed-tls', head: buffer, error });
          }
          return;
      }
    };
    const onEnd = (): void => {
      const buffer = joined();
      if (buffer.length === 0) return finish(undefined, { kind: 'closed' });
      if (buffer[0] === 0x16) {
        const error = new ClientHelloError(TlsErrorCode.Malformed, 'the client closed in the middle of its ClientHello', buffer.length);
        return finish(undefined, { kind: 'unrecognised', reason: 'malformed-tls', head: buffer, error });
      }
      finish(undefined, { kind: 'unrecognised', reason: 'incomplete', head: buffer });
    };
    const onError = (error: Error): void => finish(error);
    const onTimeout = (): void => {
      const buffer = joined();
      if (buffer.length === 0) return finish(undefined, { kind: 'unrecognised', reason: 'silent', head: buffer });
      if (buffer[0] === 0x16) return finish(new TlsProxyError(TlsErrorCode.HelloTimeout, `no complete ClientHello within ${settings.helloTimeoutMs} ms`));
      finish(undefined, { kind: 'unrecognised', reason: 'incomplete', head: buffer });
    };
    const startedAt = performance.now();
    let timer = setTimeout(onTimeout, Math.min(settings.sniffTimeoutMs, settings.helloTimeoutMs));
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onError);
  });
}
