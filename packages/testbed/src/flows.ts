import { createHash } from 'node:crypto';

/** The kinds of traffic a run mixes: HTTP keep-alive, HTTPS, raw TCP echo, UDP echo (with `--udp`). */
export type FlowKind = 'http' | 'https' | 'tcp' | 'udp';

/**
 * One flow of a run. Its destination port identifies it everywhere: every process (the
 * client, each vendor, the origin) sees the original destination, so the port is the tag
 * that survives redirection, TLS and opaque relaying alike.
 */
export interface FlowSpec {
  readonly index: number;
  readonly kind: FlowKind;
  readonly port: number;
  /** HTTPS flows: the SNI the client sends. */
  readonly serverName: string;
  /** Bytes the client sends (per request for http, per datagram for udp). */
  readonly payloadBytes: number;
  /** http: requests on the one keep-alive connection; udp: datagrams, each echoed before the next is sent. */
  readonly requests: number;
  /** nftables runs: this http flow is made by unmodified curl. */
  readonly viaCurl: boolean;
  /** tcp: the origin answers only after the client's FIN (a half-close a vendor must carry through). */
  readonly echoAfterEnd?: boolean;
  /** tcp: the client reads the answer slowly, pausing often (a vendor must hold back, not buffer without bound or drop). */
  readonly slowReader?: boolean;
}

/** What a run's flows look like; the default is the mixed run (http, https, tcp in turn, 1–64 KiB). */
export interface FlowShape {
  readonly kinds?: readonly FlowKind[];
  /** Every flow sends exactly this many bytes (per request for http); a list is taken in turn. */
  readonly payloadBytes?: number | readonly number[];
  readonly echoAfterEnd?: boolean;
  readonly slowReader?: boolean;
}

/** The default mix; the UDP kind is added on request (`--udp`, `UDP_KINDS`). */
export const KINDS: readonly FlowKind[] = ['http', 'https', 'tcp'];
/** The mix with UDP flows: every fourth flow a UDP echo. */
export const UDP_KINDS: readonly FlowKind[] = ['http', 'https', 'tcp', 'udp'];
/** Datagrams per UDP flow: one flow (one client address and port) at each vendor, several datagrams on it. */
export const UDP_DATAGRAMS = 8;
/**
 * The largest datagram a UDP flow sends: the payload of one IPv4 datagram on a 1500-byte
 * MTU. Larger ones pass on loopback, but the kind stands for what crosses a real link.
 */
export const UDP_MAX_DATAGRAM = 1472;

/** A small deterministic PRNG (mulberry32): the same seed gives the same run. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `ports`: one per flow, in order (see ports.ts for where they come from). */
export function planFlows(ports: readonly number[], seed: number, curl: boolean, shape: FlowShape = {}): FlowSpec[] {
  const random = prng(seed ^ 0x5eed);
  const kinds = shape.kinds ?? KINDS;
  return ports.map((port, index) => {
    const kind = kinds[index % kinds.length]!;
    const size = 1024 + Math.floor(random() * 63 * 1024);
    const bytes = typeof shape.payloadBytes === 'number' ? shape.payloadBytes : (shape.payloadBytes?.[index % shape.payloadBytes.length] ?? size);
    return {
      index,
      kind,
      port,
      serverName: `f${index}.testbed.test`,
      // UDP: 1 to 1472 bytes per datagram, from the same draw.
      payloadBytes: kind === 'udp' ? 1 + (bytes % UDP_MAX_DATAGRAM) : bytes,
      requests: kind === 'http' ? 3 : kind === 'udp' ? UDP_DATAGRAMS : 1,
      viaCurl: curl && kind === 'http' && index % 2 === 0,
      ...(kind === 'tcp' && shape.echoAfterEnd === true && { echoAfterEnd: true }),
      ...(kind === 'tcp' && shape.slowReader === true && { slowReader: true }),
    };
  });
}

/**
 * The first byte of a raw TCP flow's payload. A raw flow stands for a protocol neither vendor
 * knows, and the vendors sort first bytes: 22 starts a TLS record, a token byte may start an
 * HTTP request line. 0x00 is neither (nor the HTTP/2 preface's 'P'), so every vendor sees
 * unrecognised bytes at the first byte, whatever random bytes follow, and its
 * `--unrecognised relay` (which the testbed gives) decides.
 */
export const RAW_TCP_FIRST_BYTE = 0x00;

/**
 * The first byte of every datagram of a UDP flow. A UDP flow stands for a datagram protocol
 * neither vendor knows: coproxy-tls reads a UDP flow's first datagram as a QUIC Initial,
 * whose first byte has the long-header bit (0x80) set; 0x00 is no QUIC packet at all, so
 * the vendor's `--unrecognised relay` decides, as for raw TCP. (coproxy-http reads no
 * datagram protocol: every UDP flow is unrecognised there.)
 */
export const UDP_FIRST_BYTE = 0x00;

/** The bytes of request `n` (udp: datagram `n`) of a flow: derived from the seed, so any process can recompute them. */
export function payload(flow: FlowSpec, seed: number, n: number): Buffer {
  const bytes = Buffer.alloc(flow.payloadBytes);
  const random = prng(seed * 31 + flow.index * 1009 + n);
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  if (flow.kind === 'tcp') bytes[0] = RAW_TCP_FIRST_BYTE;
  if (flow.kind === 'udp') bytes[0] = UDP_FIRST_BYTE;
  return bytes;
}

export const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');
