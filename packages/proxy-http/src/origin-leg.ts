import type net from 'node:net';
import type { Exchange } from './exchange.js';
import type { HttpParser, MessageHead } from './node-http-parser.js';

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

/** The connection to the origin that one client connection's requests share, one at a time. */
export interface OriginLeg {
  readonly socket: net.Socket;
  readonly parser: HttpParser;
  /** The exchange whose response is being read. */
  current: Exchange | undefined;
  message: LegMessage;
  reuse: LegReuse;
  /** The origin keeps the connection open after the current response. */
  keepAlive: boolean;
  /** The client's socket is full: the origin is not read until it drains. */
  waitingForClientDrain: boolean;
  /**
   * Bytes of a Content-Length body still to come, passed to the client straight from the
   * socket's reads: the parser would only count them and copy each chunk.
   */
  passBody: number;
}

export function newOriginLeg(socket: net.Socket, parser: HttpParser): OriginLeg {
  return { socket, parser, current: undefined, message: { kind: 'final' }, reuse: 'reusable', keepAlive: true, waitingForClientDrain: false, passBody: 0 };
}

/** The leg carries no further request; one the origin is closing stays so, to be left to it. */
export function retire(leg: OriginLeg): void {
  if (leg.reuse === 'reusable') leg.reuse = 'retired';
}
