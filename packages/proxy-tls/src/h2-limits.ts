import type http2 from 'node:http2';
import { H2_FRAME_BOUNDS } from '@coproxy/core/vendor';

/**
 * The bounds a bumped HTTP/2 client connection lives under: each one names the attack it
 * stops (the README's "HTTP/2 attack surface" table). Most are node:http2's (nghttp2's)
 * own; the reset rate, PING/SETTINGS and WINDOW_UPDATE frames are counted here, because
 * Node exposes no option for them.
 */
export const H2_LIMITS = {
  /** SETTINGS_MAX_CONCURRENT_STREAMS we announce; streams over it are refused (REFUSED_STREAM). */
  maxConcurrentStreams: 100,
  /** SETTINGS_MAX_HEADER_LIST_SIZE: decoded header bytes per request, the HPACK bomb's and CONTINUATION flood's ceiling. */
  maxHeaderListSize: 64 * 1024,
  /** Header name/value pairs per request. */
  maxHeaderListPairs: 128,
  /** Invalid frames tolerated per session before it is destroyed. */
  maxSessionInvalidFrames: 100,
  /** Streams refused (over the concurrency limit) per session before it is destroyed. */
  maxSessionRejectedStreams: 100,
  /** Entries per SETTINGS frame. */
  maxSettings: 32,
  /** PINGs of ours awaiting an answer. */
  maxOutstandingPings: 10,
  /** Megabytes nghttp2 may hold for one session (unacknowledged frames, queued ACKs, header tables) before it answers ENHANCE_YOUR_CALM. */
  maxSessionMemory: 10,
  /** Streams the peer may reset (or abandon) in one second before the session gets GOAWAY (CVE-2023-44487, rapid reset). */
  maxResetsPerSecond: 100,
  /** PING and SETTINGS frames the peer may send in one second before the session gets GOAWAY (CVE-2019-9512, -9515): each costs us an ACK. */
  maxControlFramesPerSecond: 200,
  /**
   * WINDOW_UPDATE frames the client may send (Node neither reports nor bounds them): this
   * base, plus `windowUpdatesPerStream` per stream it opened and `windowUpdatesPerDataFrame`
   * per DATA frame bump sent it; past that, GOAWAY ENHANCE_YOUR_CALM (core's `H2FrameMeter`,
   * a 9-byte frame-header count on the session's bytes).
   */
  ...H2_FRAME_BOUNDS,
} as const;

/** node:http2 server-session options carrying `H2_LIMITS`. */
export const H2_SERVER_OPTIONS: http2.ServerSessionOptions = {
  settings: { maxConcurrentStreams: H2_LIMITS.maxConcurrentStreams, maxHeaderListSize: H2_LIMITS.maxHeaderListSize, enablePush: false },
  maxHeaderListPairs: H2_LIMITS.maxHeaderListPairs,
  maxSessionInvalidFrames: H2_LIMITS.maxSessionInvalidFrames,
  maxSessionRejectedStreams: H2_LIMITS.maxSessionRejectedStreams,
  maxSettings: H2_LIMITS.maxSettings,
  maxOutstandingPings: H2_LIMITS.maxOutstandingPings,
  maxSessionMemory: H2_LIMITS.maxSessionMemory,
};
