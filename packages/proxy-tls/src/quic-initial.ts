/**
 * The client's QUIC Initial packets, read as far as the ClientHello they carry: QUIC v1
 * (RFC 9000, RFC 9001) and v2 (RFC 9369). Initial packets are protected with keys anyone
 * can derive from the Destination Connection ID (RFC 9001 §5.2), so a vendor reads the
 * hello exactly as it reads a TCP one, with the same parser (`client-hello.ts`).
 *
 * Peers' bytes are untrusted: every length is checked against what remains, the CRYPTO
 * stream and the packets held are bounded, and the only thing it throws is a
 * `QuicInitialError` (the QUIC layer) or a `ClientHelloError` (the hello inside), each with a
 * `COPROXY_TLS_*` code.
 *
 * `QuicInitialReader` is incremental: fed the client's datagrams in the order they came, it
 * says when the ClientHello is whole. Chromium's hello with a post-quantum key share spans
 * two Initial packets, and a client may send CRYPTO frames in any order, so the CRYPTO
 * stream is reassembled by offset.
 */

import { createCipheriv, createDecipheriv, createHmac, hkdfSync } from 'node:crypto';
import { type ClientHello, ClientHelloError, HANDSHAKE_CLIENT_HELLO, parseClientHelloMessage } from './client-hello.js';
import { TlsErrorCode, TlsProxyError } from './errors.js';

/** The QUIC versions whose Initial keys this reader knows. */
export const QUIC_V1 = 0x0000_0001;
export const QUIC_V2 = 0x6b33_43cf;

interface VersionParameters {
  readonly name: 'v1' | 'v2';
  /** RFC 9001 §5.2, RFC 9369 §3.3.1. */
  readonly salt: Buffer;
  /** The HKDF label prefix: `quic` (RFC 9001 §5.1) or `quicv2` (RFC 9369 §3.3.2). */
  readonly labelPrefix: string;
  /** The long-header packet type bits (0x30 >> 4) of an Initial: 0 in v1, 1 in v2 (RFC 9369 §3.2). */
  readonly initialType: number;
}

const VERSIONS = new Map<number, VersionParameters>([
  [QUIC_V1, { name: 'v1', salt: Buffer.from('38762cf7f55934b34d179ae6a4c80cadccbb7f0a', 'hex'), labelPrefix: 'quic', initialType: 0 }],
  [QUIC_V2, { name: 'v2', salt: Buffer.from('0dede3def700a6db819381be6e269dcbf9bd2ed9', 'hex'), labelPrefix: 'quicv2', initialType: 1 }],
]);

/** A client's Initial datagram is at least 1200 bytes (RFC 9000 §14.1); a server must drop smaller ones. */
export const MIN_INITIAL_DATAGRAM = 1200;
/** Connection IDs are at most 20 bytes in v1 and v2 (RFC 9000 §17.2). */
const MAX_CONNECTION_ID = 20;
/** The client's first Destination Connection ID is at least 8 bytes (RFC 9000 §7.2). */
const MIN_CLIENT_DCID = 8;
/**
 * Long-header packets read in one datagram. A client coalesces an Initial with a 0-RTT or
 * Handshake packet, a few at most; each Initial costs an AES-GCM decryption, and a 64 KiB
 * datagram of 40-byte Initials made the reader decrypt some 1600 (about 18 ms of CPU for one
 * datagram, every other flow waiting).
 */
export const MAX_PACKETS_PER_DATAGRAM = 8;
const AEAD_TAG = 16;
const SAMPLE = 16;

/** The reader's codes: the QUIC ones of errors.ts. */
export type QuicInitialErrorCode =
  | typeof TlsErrorCode.QuicNotInitial
  | typeof TlsErrorCode.QuicUnsupportedVersion
  | typeof TlsErrorCode.QuicMalformed
  | typeof TlsErrorCode.QuicDecryptFailed
  | typeof TlsErrorCode.QuicTooLarge
  | typeof TlsErrorCode.QuicBusy;

/**
 * Where the reader's own memory is charged: the CRYPTO stream asks before it grows (a
 * refusal fails the read with `QUIC_BUSY`, nothing allocated) and gives back what it
 * frees. A proxy shares one budget across its flows (quic-flow.ts).
 */
export interface MemoryAccount {
  take(bytes: number): boolean;
  give(bytes: number): void;
}

const UNBOUNDED: MemoryAccount = { take: () => true, give: () => undefined };

export class QuicInitialError extends TlsProxyError<QuicInitialErrorCode> {
  override readonly name = 'QuicInitialError';
  constructor(
    code: QuicInitialErrorCode,
    message: string,
    /** Which of the flow's datagrams (from 0) held the fault. */
    readonly datagram: number,
    /** The offset in that datagram; for faults inside a decrypted payload, of the packet. */
    readonly offset: number,
    options?: { cause?: unknown },
  ) {
    super(code, `${code}: ${message} (datagram ${datagram}, byte ${offset})`, options);
  }
}

/** The keys that protect one direction's Initial packets (RFC 9001 §5.2). */
export interface InitialKeys {
  readonly secret: Buffer;
  readonly key: Buffer;
  readonly iv: Buffer;
  readonly hp: Buffer;
}

/** HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1) with an empty context, for outputs of at most one SHA-256 block. */
function expandLabel(secret: Buffer, label: string, length: number): Buffer {
  const full = Buffer.from(`tls13 ${label}`, 'latin1');
  const info = Buffer.concat([Buffer.from([length >> 8, length & 0xff, full.length]), full, Buffer.from([0])]);
  // HKDF-Expand (RFC 5869 §2.3): T(1) = HMAC(PRK, info | 0x01) is enough for 32 bytes.
  return createHmac('sha256', secret).update(info).update(Buffer.from([1])).digest().subarray(0, length);
}

/** The client's Initial keys for `version` and the Destination Connection ID of its first Initial. */
export function deriveClientInitialKeys(version: number, dcid: Buffer): InitialKeys {
  const parameters = VERSIONS.get(version);
  if (parameters === undefined) throw new RangeError(`no Initial keys for QUIC version 0x${version.toString(16)}`);
  // HKDF-Extract then HKDF-Expand-Label(initial_secret, "client in", "", 32) in one hkdfSync.
  const info = Buffer.concat([Buffer.from([0, 32, 15]), Buffer.from('tls13 client in', 'latin1'), Buffer.from([0])]);
  const secret = Buffer.from(hkdfSync('sha256', dcid, parameters.salt, info, 32));
  const prefix = parameters.labelPrefix;
  return { secret, key: expandLabel(secret, `${prefix} key`, 16), iv: expandLabel(secret, `${prefix} iv`, 12), hp: expandLabel(secret, `${prefix} hp`, 16) };
}

/** The long header of one Initial packet, as read before its protection is removed. */
export interface InitialHeader {
  readonly version: number;
  readonly dcid: Buffer;
  readonly scid: Buffer;
  readonly token: Buffer;
  /** Where the (protected) packet number starts, from the start of the packet. */
  readonly packetNumberOffset: number;
  /** The whole packet's length: header, packet number, payload and tag. */
  readonly packetLength: number;
}

/** A cursor over one datagram; every read is bounded by `end`. */
class Cursor {
  constructor(
    private readonly bytes: Buffer,
    private readonly datagram: number,
    public position: number,
    private readonly end = bytes.length,
  ) {}

  get remaining(): number {
    return this.end - this.position;
  }

  fail(message: string, code: QuicInitialErrorCode = TlsErrorCode.QuicMalformed): never {
    throw new QuicInitialError(code, message, this.datagram, this.position);
  }

  u8(what: string): number {
    if (this.remaining < 1) this.fail(`${what}: truncated`);
    return this.bytes[this.position++]!;
  }

  take(length: number, what: string): Buffer {
    if (length > this.remaining) this.fail(`${what}: length ${length} runs past its container (${this.remaining} left)`);
    const slice = this.bytes.subarray(this.position, this.position + length);
    this.position += length;
    return slice;
  }

  /**
   * A variable-length integer (RFC 9000 §16). Eight-byte values above 2^53 lose precision;
   * every caller bounds the value far below that, so such a value fails its check anyway.
   */
  varint(what: string): number {
    const first = this.u8(what);
    const length = 1 << (first >> 6);
    let value = first & 0x3f;
    if (length - 1 > this.remaining) this.fail(`${what}: truncated variable-length integer`);
    for (let i = 1; i < length; i++) value = value * 256 + this.bytes[this.position++]!;
    return value;
  }
}

/**
 * Reads the long header of the packet at `offset` of `datagram` up to its packet number.
 * Throws `QUIC_NOT_INITIAL` for a short header or another long-header type, and
 * `QUIC_UNSUPPORTED_VERSION` for a version without known Initial keys.
 */
export function readInitialHeader(datagram: Buffer, offset = 0, datagramIndex = 0): InitialHeader {
  const c: Cursor = new Cursor(datagram, datagramIndex, offset);
  const first = c.u8('first byte');
  if ((first & 0x80) === 0) c.fail('a short-header packet, not an Initial', TlsErrorCode.QuicNotInitial);
  // The fixed bit (0x40) is not checked: a client may grease it (RFC 9287) when it remembers
  // a server that allowed it; the keys and the AEAD decide whether this is QUIC.
  if (c.remaining < 4) c.fail('version: truncated');
  const version = datagram.readUInt32BE(c.position);
  c.position += 4;
  const parameters = VERSIONS.get(version);
  if (parameters === undefined) return c.fail(`QUIC version 0x${version.toString(16).padStart(8, '0')} has no known Initial keys`, TlsErrorCode.QuicUnsupportedVersion);
  const type = (first & 0x30) >> 4;
  if (type !== parameters.initialType) c.fail(`long-header packet type ${type} is not ${parameters.name}'s Initial (${parameters.initialType})`, TlsErrorCode.QuicNotInitial);
  const dcidLength = c.u8('DCID length');
  if (dcidLength > MAX_CONNECTION_ID) c.fail(`DCID length ${dcidLength} exceeds ${MAX_CONNECTION_ID}`);
  const dcid = c.take(dcidLength, 'DCID');
  const scidLength = c.u8('SCID length');
  if (scidLength > MAX_CONNECTION_ID) c.fail(`SCID length ${scidLength} exceeds ${MAX_CONNECTION_ID}`);
  const scid = c.take(scidLength, 'SCID');
  const token = c.take(c.varint('token length'), 'token');
  const length = c.varint('length');
  // Header protection samples 16 bytes from 4 bytes after the start of the packet number,
  // whatever its real length (RFC 9001 §5.4.2): a shorter packet cannot be unprotected.
  if (length < 4 + SAMPLE) c.fail(`packet length ${length} is below the 20 bytes header protection needs`);
  const packetNumberOffset = c.position;
  if (length > c.remaining) c.fail(`packet length ${length} runs past the datagram (${c.remaining} left)`);
  return { version, dcid, scid, token, packetNumberOffset: packetNumberOffset - offset, packetLength: packetNumberOffset - offset + length };
}

/** One decrypted Initial packet. */
export interface DecryptedInitial {
  readonly header: InitialHeader;
  readonly packetNumber: number;
  readonly payload: Buffer;
}

/**
 * Removes header protection (AES-128-ECB mask, RFC 9001 §5.4.3) and the AEAD
 * (AEAD_AES_128_GCM, §5.3) of one Initial packet, `packet` being exactly its bytes.
 * `largestPacketNumber` is the largest packet number already read on the flow (-1 before
 * the first), for the packet-number reconstruction of RFC 9000 §A.3.
 */
export function decryptInitial(packet: Buffer, header: InitialHeader, keys: InitialKeys, largestPacketNumber = -1, datagramIndex = 0, offset = 0): DecryptedInitial {
  const pnOffset = header.packetNumberOffset;
  const sample = packet.subarray(pnOffset + 4, pnOffset + 4 + SAMPLE);
  const ecb = createCipheriv('aes-128-ecb', keys.hp, null).setAutoPadding(false);
  const mask = ecb.update(sample);
  const first = packet[0]! ^ (mask[0]! & 0x0f);
  const pnLength = (first & 0x03) + 1;
  if (header.packetLength - pnOffset < pnLength + AEAD_TAG) {
    throw new QuicInitialError(TlsErrorCode.QuicMalformed, 'packet too short for its packet number and tag', datagramIndex, offset + pnOffset);
  }
  const unprotected = Buffer.from(packet.subarray(0, pnOffset + pnLength));
  unprotected[0] = first;
  let truncated = 0;
  for (let i = 0; i < pnLength; i++) {
    unprotected[pnOffset + i] = packet[pnOffset + i]! ^ mask[1 + i]!;
    truncated = truncated * 256 + unprotected[pnOffset + i]!;
  }
  const packetNumber = decodePacketNumber(largestPacketNumber, truncated, pnLength * 8);
  const nonce = Buffer.from(keys.iv);
  for (let i = 0; i < 6; i++) nonce[11 - i]! ^= Math.floor(packetNumber / 2 ** (8 * i)) & 0xff;
  const body = packet.subarray(pnOffset + pnLength, header.packetLength);
  const gcm = createDecipheriv('aes-128-gcm', keys.key, nonce);
  gcm.setAAD(unprotected);
  gcm.setAuthTag(body.subarray(body.length - AEAD_TAG));
  let payload: Buffer;
  try {
    payload = Buffer.concat([gcm.update(body.subarray(0, body.length - AEAD_TAG)), gcm.final()]);
  } catch (error) {
    // Node says only "unable to authenticate data": wrong keys, or bytes changed on the way.
    throw new QuicInitialError(TlsErrorCode.QuicDecryptFailed, 'the Initial packet does not authenticate with the keys of its DCID', datagramIndex, offset, { cause: error });
  }
  // Reserved bits are protected; after removal they must be 0 (RFC 9000 §17.2).
  if ((first & 0x0c) !== 0) throw new QuicInitialError(TlsErrorCode.QuicMalformed, 'reserved header bits are set', datagramIndex, offset);
  return { header, packetNumber, payload };
}

/** RFC 9000 §A.3: the full packet number closest to the next expected one. */
function decodePacketNumber(largest: number, truncated: number, bits: number): number {
  const expected = largest + 1;
  const window = 2 ** bits;
  const half = window / 2;
  const candidate = expected - (expected % window) + truncated;
  if (candidate <= expected - half && candidate < 2 ** 62 - window) return candidate + window;
  if (candidate > expected + half && candidate >= window) return candidate - window;
  return candidate;
}

const tooManyPackets = (index: number, offset: number): QuicInitialError =>
  new QuicInitialError(TlsErrorCode.QuicMalformed, `more than ${MAX_PACKETS_PER_DATAGRAM} long-header packets coalesced in one datagram`, index, offset);

/** The frames an Initial may carry (RFC 9000 §12.4, table 3). */
const FRAME_PADDING = 0x00;
const FRAME_PING = 0x01;
const FRAME_ACK = 0x02;
const FRAME_ACK_ECN = 0x03;
const FRAME_CRYPTO = 0x06;
const FRAME_CONNECTION_CLOSE = 0x1c;

/** What the frames of one payload said, besides CRYPTO data. */
interface FrameFacts {
  connectionClose: boolean;
}

/** Walks the frames of one decrypted Initial payload, handing CRYPTO data to `crypto`. */
function walkFrames(payload: Buffer, datagram: number, packetOffset: number, crypto: (offset: number, data: Buffer) => void, facts: FrameFacts): void {
  // Faults inside the payload are reported at the packet's offset: the payload was encrypted.
  const c = new Cursor(payload, datagram, 0);
  const fail = (message: string): never => {
    throw new QuicInitialError(TlsErrorCode.QuicMalformed, `${message} (payload byte ${c.position})`, datagram, packetOffset);
  };
  if (payload.length === 0) fail('an Initial without frames');
  while (c.remaining > 0) {
    const type = payload[c.position]!;
    // Frame types must use the shortest encoding (RFC 9000 §12.4); every type allowed here is one byte.
    if (type >= 0x40) fail(`frame type 0x${type.toString(16)} is not allowed in an Initial`);
    c.position++;
    switch (type) {
      case FRAME_PADDING:
      case FRAME_PING:
        break;
      case FRAME_ACK:
      case FRAME_ACK_ECN: {
        c.varint('ACK largest');
        c.varint('ACK delay');
        const ranges = c.varint('ACK range count');
        c.varint('ACK first range');
        // Each range takes at least two bytes: the count cannot make the loop outrun the payload.
        if (ranges > c.remaining / 2) fail(`ACK range count ${ranges} runs past the payload`);
        for (let i = 0; i < ranges; i++) {
          c.varint('ACK gap');
          c.varint('ACK range');
        }
        if (type === FRAME_ACK_ECN) for (let i = 0; i < 3; i++) c.varint('ACK ECN count');
        break;
      }
      case FRAME_CRYPTO: {
        const offset = c.varint('CRYPTO offset');
        const data = c.take(c.varint('CRYPTO length'), 'CRYPTO data');
        crypto(offset, data);
        break;
      }
      case FRAME_CONNECTION_CLOSE: {
        c.varint('CONNECTION_CLOSE error code');
        c.varint('CONNECTION_CLOSE frame type');
        c.take(c.varint('CONNECTION_CLOSE reason length'), 'CONNECTION_CLOSE reason');
        facts.connectionClose = true;
        break;
      }
      default:
        fail(`frame type 0x${type.toString(16)} is not allowed in an Initial`);
    }
  }
}

/**
 * The CRYPTO stream of the Initial packet number space, reassembled by offset. Bounded: no
 * byte beyond `limit` is accepted, so it never holds more than `limit` bytes. Data sent
 * twice must be the same both times: a client that sends two readings of one offset would
 * let an inspector read one and the server the other.
 */
class CryptoStream {
  /**
   * Grown on demand (doubling, up to `limit`): a flow that sends one small Initial costs
   * little. Dense, so one byte far into the stream costs everything before it: each growth
   * is charged to `memory` first (a 1,200-byte datagram can ask for ~130 KB).
   */
  private bytes = Buffer.alloc(0);
  private filled = new Uint8Array(0);
  /** How many bytes from offset 0 are in. */
  private contiguous = 0;
  private highest = 0;
  private sealed = false;

  constructor(
    private limit: number,
    private readonly memory: MemoryAccount,
  ) {}

  /** Adds `data` at `offset`; returns the fault, undefined when accepted. */
  add(offset: number, data: Buffer): { code: QuicInitialErrorCode; message: string } | undefined {
    const end = offset + data.length;
    if (end > this.limit) {
      if (this.sealed) return { code: TlsErrorCode.QuicMalformed, message: `CRYPTO data up to byte ${end} runs past the ${this.limit}-byte ClientHello` };
      return { code: TlsErrorCode.QuicTooLarge, message: `CRYPTO data up to byte ${end} exceeds the ${this.limit}-byte bound` };
    }
    if (end > this.bytes.length && !this.grow(end)) {
      return { code: TlsErrorCode.QuicBusy, message: `no memory left in the QUIC budget for CRYPTO data up to byte ${end}` };
    }
    if (this.filled.subarray(offset, end).indexOf(1) === -1) {
      // New data only (the usual case): one copy.
      data.copy(this.bytes, offset);
      this.filled.fill(1, offset, end);
    } else {
      for (let i = 0; i < data.length; i++) {
        const at = offset + i;
        if (this.filled[at] === 1) {
          if (this.bytes[at] !== data[i]) return { code: TlsErrorCode.QuicMalformed, message: `CRYPTO byte ${at} sent twice with different values` };
        } else {
          this.bytes[at] = data[i]!;
          this.filled[at] = 1;
        }
      }
    }
    this.highest = Math.max(this.highest, end);
    const gap = this.filled.indexOf(0, this.contiguous);
    this.contiguous = gap === -1 ? this.filled.length : gap;
    return undefined;
  }

  /** The buffer and its fill map, grown to hold `end`; false (nothing allocated) when the memory account refuses. */
  private grow(end: number): boolean {
    const size = Math.min(this.limit, Math.max(end, this.bytes.length * 2, 2048));
    if (!this.memory.take(2 * (size - this.bytes.length))) return false;
    const bytes = Buffer.alloc(size);
    this.bytes.copy(bytes);
    const filled = new Uint8Array(size);
    filled.set(this.filled);
    this.bytes = bytes;
    this.filled = filled;
    return true;
  }

  /**
   * Once the hello is whole: nothing past `end` may come any more (later data there is
   * refused without growing), and the buffer shrinks to it, the rest given back.
   */
  seal(end: number): void {
    this.limit = end;
    this.sealed = true;
    if (this.bytes.length <= end) return;
    const freed = this.bytes.length - end;
    this.bytes = Buffer.from(this.bytes.subarray(0, end));
    this.filled = this.filled.slice(0, end);
    this.memory.give(2 * freed);
  }

  /** The bytes from offset 0 received so far without a gap. */
  get prefix(): Buffer {
    return this.bytes.subarray(0, this.contiguous);
  }

  /** One past the highest byte received. */
  get end(): number {
    return this.highest;
  }
}

/** What the reader learnt of the flow when the hello was whole. */
export interface QuicInitialSummary {
  readonly version: number;
  readonly versionName: 'v1' | 'v2';
  readonly dcid: Buffer;
  readonly scid: Buffer;
  readonly tokenLength: number;
  /** Initial packets read, over `datagrams` datagrams. */
  readonly packets: number;
  readonly datagrams: number;
  /** Other long-header packets coalesced after an Initial (0-RTT, Handshake), skipped unread. */
  readonly skippedPackets: number;
  /** A CONNECTION_CLOSE frame was among the Initials: the client gave up. */
  readonly connectionClose: boolean;
}

export type QuicReadResult =
  | { readonly done: false }
  | { readonly done: true; readonly hello: ClientHello; readonly summary: QuicInitialSummary };

export interface QuicInitialReaderOptions {
  /** The largest ClientHello accepted, and so the CRYPTO stream's bound (default 64 KiB, as on TCP). */
  readonly maxHelloBytes?: number;
  /** The most datagrams read before the hello is whole (default 16: Chromium's hello takes 1 or 2). */
  readonly maxDatagrams?: number;
  /** Where the reader's CRYPTO stream memory is charged (default: unbounded). */
  readonly memory?: MemoryAccount;
}

/**
 * Reads a client's Initial packets, datagram by datagram, until its ClientHello is whole.
 *
 * @example
 * const reader = new QuicInitialReader();
 * for (const datagram of datagrams) {
 *   const result = reader.push(datagram); // throws QuicInitialError or ClientHelloError
 *   if (result.done) return result.hello;
 * }
 */
export class QuicInitialReader {
  private readonly maxHelloBytes: number;
  private readonly maxDatagrams: number;
  private readonly crypto: CryptoStream;
  private datagrams = 0;
  private packets = 0;
  private skippedPackets = 0;
  private largestPacketNumber = -1;
  private first: { version: number; dcid: Buffer; scid: Buffer; tokenLength: number; keys: InitialKeys } | undefined;
  private readonly facts: FrameFacts = { connectionClose: false };
  private finished = false;
  /** After the hello: the client's later Initials are checked against it (`check`), their DCID free to change. */
  private checking = false;
  /** The whole hello's length with its header, once read. */
  private helloEnd: number | undefined;

  constructor(options: QuicInitialReaderOptions = {}) {
    this.maxHelloBytes = options.maxHelloBytes ?? 65_536;
    this.maxDatagrams = options.maxDatagrams ?? 16;
    // The hello and its 4-byte handshake header.
    this.crypto = new CryptoStream(this.maxHelloBytes + 4, options.memory ?? UNBOUNDED);
  }

  /** Reads one datagram of the flow. After `done`, or after a throw, the reader takes no more. */
  push(datagram: Buffer): QuicReadResult {
    if (this.finished) throw new Error('QuicInitialReader: push after the reader finished');
    // A fault leaves the reader finished: a flow is read to one end, its first fault.
    this.finished = true;
    const index = this.datagrams++;
    if (index >= this.maxDatagrams) {
      throw new QuicInitialError(TlsErrorCode.QuicTooLarge, `no whole ClientHello in ${this.maxDatagrams} datagrams`, index, 0);
    }
    if (index === 0 && datagram.length < MIN_INITIAL_DATAGRAM) {
      // Tell what it is first: a non-QUIC datagram is unrecognised, not a short Initial.
      readInitialHeader(datagram, 0, index);
      throw new QuicInitialError(TlsErrorCode.QuicMalformed, `an Initial datagram of ${datagram.length} bytes (at least ${MIN_INITIAL_DATAGRAM})`, index, 0);
    }
    this.readPackets(datagram, index);
    const hello = this.hello(index);
    if (hello === undefined) {
      this.finished = false;
      return { done: false };
    }
    const first = this.first!;
    this.helloEnd = 4 + this.crypto.prefix.readUIntBE(1, 3);
    // Kept for `check` while the flow is relayed: the hello's bytes only.
    this.crypto.seal(this.helloEnd);
    return {
      done: true,
      hello,
      summary: {
        version: first.version,
        versionName: VERSIONS.get(first.version)!.name,
        dcid: first.dcid,
        scid: first.scid,
        tokenLength: first.tokenLength,
        packets: this.packets,
        datagrams: this.datagrams,
        skippedPackets: this.skippedPackets,
        connectionClose: this.facts.connectionClose,
      },
    };
  }

  /** Reads the long-header packets of one datagram, coalesced ones included, at most {@link MAX_PACKETS_PER_DATAGRAM}. */
  private readPackets(datagram: Buffer, index: number): void {
    const packetsBefore = this.packets;
    let offset = 0;
    for (let count = 0; offset < datagram.length; count++) {
      // After the first packet, what follows is another coalesced packet, or padding a
      // client may add after its packets (RFC 9000 §12.2): zero bytes, or a short header
      // (its DCID would be another connection's). Neither carries CRYPTO data for us.
      if (offset > 0 && (datagram[offset]! & 0x80) === 0) break;
      if (count === MAX_PACKETS_PER_DATAGRAM) throw tooManyPackets(index, offset);
      offset += this.readPacket(datagram, offset, index);
    }
    // Every datagram that carries an Initial is at least 1200 bytes (RFC 9000 §14.1); one of
    // 0-RTT packets only (a resuming client) may be smaller.
    if (this.packets > packetsBefore && datagram.length < MIN_INITIAL_DATAGRAM) {
      throw new QuicInitialError(TlsErrorCode.QuicMalformed, `an Initial datagram of ${datagram.length} bytes (at least ${MIN_INITIAL_DATAGRAM})`, index, 0);
    }
  }

  /**
   * Checks a datagram the client sent after its hello was whole, before it is relayed: every
   * Initial in it must be of the flow's connection (it decrypts with the flow's Initial keys:
   * a new DCID's Initial is a new connection a server would accept, with a hello never read)
   * and its CRYPTO bytes must be the hello's own (a server that dropped a packet the reader
   * took, a duplicate packet number, reads the hello from the later bytes). The DCID may
   * change (the client takes the server's after its first answer); the keys do not (RFC 9001
   * §5.2). Short-header, 0-RTT and Handshake packets pass unread. Throws a
   * `QuicInitialError` at the first fault; a client that saw a Retry fails here too (its keys
   * change), and falls back to TCP.
   */
  check(datagram: Buffer): void {
    if (this.helloEnd === undefined) throw new Error('QuicInitialReader: check before the hello was whole');
    this.checking = true;
    const index = this.datagrams++;
    if ((datagram[0]! & 0x80) === 0) return;
    this.readPackets(datagram, index);
    if (this.crypto.end > this.helloEnd) {
      throw new QuicInitialError(TlsErrorCode.QuicMalformed, `CRYPTO data up to byte ${this.crypto.end} runs past the ${this.helloEnd}-byte ClientHello`, index, 0);
    }
  }

  /** Reads (or skips) one long-header packet at `offset`; returns its length. */
  private readPacket(datagram: Buffer, offset: number, index: number): number {
    const first = this.first;
    if (first !== undefined && datagram.length - offset >= 5) {
      // A 0-RTT or Handshake packet of the flow's version, coalesced or in a datagram of its own: skipped by its length.
      const version = datagram.readUInt32BE(offset + 1);
      const parameters = VERSIONS.get(version);
      const type = (datagram[offset]! & 0x30) >> 4;
      if ((datagram[offset]! & 0x80) !== 0 && version === first.version && parameters !== undefined && type !== parameters.initialType) {
        // Retry (type 3 in v1, 0 in v2) is the server's alone, and has no length to skip by.
        if (type === (parameters.name === 'v1' ? 3 : 0)) throw new QuicInitialError(TlsErrorCode.QuicMalformed, 'a Retry packet from the client', index, offset);
        return this.skipLongHeader(datagram, offset, index);
      }
    }
    const header = readInitialHeader(datagram, offset, index);
    if (first === undefined) {
      if (header.dcid.length < MIN_CLIENT_DCID) {
        throw new QuicInitialError(TlsErrorCode.QuicMalformed, `a client's first DCID of ${header.dcid.length} bytes (at least ${MIN_CLIENT_DCID})`, index, offset + 6);
      }
      this.first = {
        version: header.version,
        dcid: Buffer.from(header.dcid),
        scid: Buffer.from(header.scid),
        tokenLength: header.token.length,
        keys: deriveClientInitialKeys(header.version, header.dcid),
      };
    } else if (header.version !== first.version || (!this.checking && !header.dcid.equals(first.dcid))) {
      // Until the server answers, every Initial of the client carries the same version and DCID.
      throw new QuicInitialError(TlsErrorCode.QuicMalformed, 'an Initial with another version or DCID than the flow’s first', index, offset);
    }
    const packet = datagram.subarray(offset, offset + header.packetLength);
    const decrypted = decryptInitial(packet, header, this.first!.keys, this.largestPacketNumber, index, offset);
    this.largestPacketNumber = Math.max(this.largestPacketNumber, decrypted.packetNumber);
    this.packets++;
    walkFrames(
      decrypted.payload,
      index,
      offset,
      (at, data) => {
        const fault = this.crypto.add(at, data);
        if (fault !== undefined) throw new QuicInitialError(fault.code, fault.message, index, offset);
      },
      this.facts,
    );
    return header.packetLength;
  }

  private skipLongHeader(datagram: Buffer, offset: number, index: number): number {
    const c = new Cursor(datagram, index, offset + 5);
    c.take(c.u8('DCID length'), 'DCID');
    c.take(c.u8('SCID length'), 'SCID');
    const length = c.varint('length');
    c.take(length, 'coalesced packet');
    this.skippedPackets++;
    return c.position - offset;
  }

  /** The ClientHello once the CRYPTO stream holds it whole; throws for a stream that is no hello. */
  private hello(index: number): ClientHello | undefined {
    const prefix = this.crypto.prefix;
    if (prefix.length >= 1 && prefix[0] !== HANDSHAKE_CLIENT_HELLO) {
      throw new ClientHelloError(TlsErrorCode.NotClientHello, `handshake type ${prefix[0]} is not ClientHello (1)`, 0);
    }
    if (prefix.length < 4) return undefined;
    const length = prefix.readUIntBE(1, 3);
    if (length > this.maxHelloBytes) throw new ClientHelloError(TlsErrorCode.TooLarge, `ClientHello of ${length} bytes exceeds ${this.maxHelloBytes}`, 1);
    // Nothing follows the hello in the client's Initial CRYPTO stream until the server answers.
    if (this.crypto.end > 4 + length) {
      throw new QuicInitialError(TlsErrorCode.QuicMalformed, `CRYPTO data up to byte ${this.crypto.end} runs past the ${4 + length}-byte ClientHello`, index, 0);
    }
    if (prefix.length < 4 + length) return undefined;
    return parseClientHelloMessage(prefix.subarray(0, 4 + length), this.maxHelloBytes);
  }
}
