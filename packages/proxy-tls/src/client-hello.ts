/**
 * A strict parser for the TLS ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2), the only
 * message this proxy reads before deciding. Peers' bytes are untrusted: every length is
 * checked against what remains, every bound is explicit, and the only thing it throws is
 * a `ClientHelloError` with a code and the offset of the fault.
 *
 * It reads TLS records (type 22, handshake) and reassembles the handshake message across
 * as many TLS records and TCP segments as the client used. `parseClientHello` is
 * incremental: given the bytes so far, it says how many more it needs, or returns the
 * hello and how many bytes of the stream it spans.
 */

import { TlsErrorCode, TlsProxyError } from './errors.js';

export const TLS_RECORD_HANDSHAKE = 22;
export const HANDSHAKE_CLIENT_HELLO = 1;
/** A plaintext TLS record carries at most 2^14 bytes (RFC 8446 §5.1). */
const MAX_TLS_RECORD = 16_384;

export const EXT_SERVER_NAME = 0x0000;
export const EXT_SUPPORTED_GROUPS = 0x000a;
export const EXT_EC_POINT_FORMATS = 0x000b;
export const EXT_SIGNATURE_ALGORITHMS = 0x000d;
export const EXT_ALPN = 0x0010;
export const EXT_SUPPORTED_VERSIONS = 0x002b;
export const EXT_ENCRYPTED_CLIENT_HELLO = 0xfe0d;

/** The parser's codes: the `COPROXY_TLS_` codes of errors.ts for the ClientHello. */
export type ClientHelloErrorCode =
  | typeof TlsErrorCode.NotTls
  | typeof TlsErrorCode.BadRecord
  | typeof TlsErrorCode.NotClientHello
  | typeof TlsErrorCode.Malformed
  | typeof TlsErrorCode.TooLarge
  | typeof TlsErrorCode.DuplicateExtension;

/**
 * A server_name extension that is legal (or tolerated) but unusual: the hello is read all
 * the same, and this fact goes to the policy, which decides. Servers read these cases in
 * different ways (OpenSSL accepts one host_name entry and nothing else; Go's crypto/tls
 * skips other name types, refuses a second host_name and a trailing dot), so the parser
 * names the server only when one reading is possible.
 *
 * - `empty-list`: the extension is empty, or its list is (no name at all);
 * - `empty-name`: one host_name entry of zero bytes;
 * - `not-host-name`: an entry of a name type other than host_name (0), skipped; the
 *   host_name beside it, if any, is still the name;
 * - `multiple-names`: more than one host_name entry (RFC 6066 §3 forbids it): no name;
 * - `too-long`: a host_name longer than a DNS name (253 bytes, 254 with a trailing dot);
 * - `invalid-name`: bytes that are not a DNS name (outside letters, digits, `-`, `_`, an
 *   empty or over-63-byte label, raw UTF-8 where RFC 6066 wants A-labels, NUL);
 * - `trailing-dot`: the name ends in a dot (RFC 6066 says it must not); the name is kept,
 *   without the dot, as the origins that accept it read it.
 */
export type SniAnomaly = 'empty-list' | 'empty-name' | 'not-host-name' | 'multiple-names' | 'too-long' | 'invalid-name' | 'trailing-dot';

/** One entry of the server_name list as sent: its name type and its bytes (as latin1). */
export interface ServerNameEntry {
  readonly type: number;
  readonly name: string;
}

export class ClientHelloError extends TlsProxyError<ClientHelloErrorCode> {
  override readonly name = 'ClientHelloError';
  constructor(
    code: ClientHelloErrorCode,
    message: string,
    /** Offset in the stream (TLS record headers included) where the fault was found. */
    readonly offset: number,
  ) {
    super(code, `${code}: ${message} (at byte ${offset})`);
  }
}

export interface ClientHello {
  /** `legacy_version` of the hello, e.g. 0x0303. */
  readonly legacyVersion: number;
  /** The TLS record layer's version of the first TLS record. */
  readonly tlsRecordVersion: number;
  readonly random: Buffer;
  readonly sessionId: Buffer;
  /** In the client's order, GREASE values included. */
  readonly cipherSuites: readonly number[];
  readonly compressionMethods: readonly number[];
  /** Extension types in the client's order, GREASE included. */
  readonly extensions: readonly number[];
  /**
   * The `host_name` of server_name, lower-cased and without a trailing dot, when exactly one
   * host_name entry is a DNS name; with ECH this is the outer (public) name.
   */
  readonly serverName: string | undefined;
  /** Set when server_name is present but unusual (see `SniAnomaly`); undefined otherwise. */
  readonly serverNameAnomaly: SniAnomaly | undefined;
  /** Every server_name entry as sent, in order (empty without the extension). */
  readonly serverNames: readonly ServerNameEntry[];
  readonly alpn: readonly string[];
  /** From supported_versions, in the client's order, GREASE included. */
  readonly supportedVersions: readonly number[];
  readonly supportedGroups: readonly number[];
  readonly ecPointFormats: readonly number[];
  readonly signatureAlgorithms: readonly number[];
  /** Present when the hello carries an outer encrypted_client_hello extension. */
  readonly ech: { readonly configId: number; readonly kdf: number; readonly aead: number } | undefined;
  /** How many TLS records the hello spanned. */
  readonly tlsRecordCount: number;
}

export type ParseResult =
  | { readonly done: false; /** At least this many more bytes are needed. */ readonly needed: number }
  | { readonly done: true; readonly hello: ClientHello; /** Bytes of the stream the hello's TLS records span. */ readonly consumed: number };

/** GREASE values (RFC 8701): 0x?a?a with both bytes equal. */
export const isGrease = (value: number): boolean => (value & 0x0f0f) === 0x0a0a && value >> 8 === (value & 0xff);

/**
 * Parses the ClientHello at the start of `stream`. `maxBytes` bounds the handshake
 * message (default 64 KiB: a post-quantum hello with ECH is a few KiB).
 */
export function parseClientHello(stream: Buffer, maxBytes = 65_536): ParseResult {
  if (stream.length === 0) return { done: false, needed: 5 };
  if (stream[0] !== TLS_RECORD_HANDSHAKE) throw new ClientHelloError(TlsErrorCode.NotTls, `TLS record type ${stream[0]} is not a handshake (22)`, 0);
  // Reassemble the handshake message from consecutive handshake TLS records.
  const fragments: Buffer[] = [];
  /** Where each fragment starts in the stream, to report faults at stream offsets. */
  const starts: number[] = [];
  let gathered = 0;
  let offset = 0;
  let tlsRecordCount = 0;
  let tlsRecordVersion = 0;
  let messageLength: number | undefined;
  const locate = (at: number): number => streamOffset(fragments, starts, at);
  for (;;) {
    if (stream.length - offset < 5) return { done: false, needed: 5 - (stream.length - offset) };
    const type = stream[offset]!;
    const major = stream[offset + 1]!;
    const length = stream.readUInt16BE(offset + 3);
    if (type !== TLS_RECORD_HANDSHAKE) {
      throw new ClientHelloError(TlsErrorCode.BadRecord, `TLS record type ${type} inside the ClientHello`, offset);
    }
    if (major !== 3) throw new ClientHelloError(TlsErrorCode.BadRecord, `TLS record version ${major}.${stream[offset + 2]} is not 3.x`, offset + 1);
    if (length === 0 || length > MAX_TLS_RECORD) throw new ClientHelloError(TlsErrorCode.BadRecord, `TLS record length ${length} is not 1..${MAX_TLS_RECORD}`, offset + 3);
    if (tlsRecordCount === 0) tlsRecordVersion = stream.readUInt16BE(offset + 1);
    if (stream.length - offset - 5 < length) return { done: false, needed: length - (stream.length - offset - 5) };
    fragments.push(stream.subarray(offset + 5, offset + 5 + length));
    starts.push(offset + 5);
    gathered += length;
    offset += 5 + length;
    tlsRecordCount++;
    if (messageLength === undefined && gathered >= 4) {
      const header = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
      if (header[0] !== HANDSHAKE_CLIENT_HELLO) {
        throw new ClientHelloError(TlsErrorCode.NotClientHello, `handshake type ${header[0]} is not ClientHello (1)`, locate(0));
      }
      messageLength = header.readUIntBE(1, 3);
      if (messageLength > maxBytes) throw new ClientHelloError(TlsErrorCode.TooLarge, `ClientHello of ${messageLength} bytes exceeds ${maxBytes}`, locate(1));
    }
    if (messageLength !== undefined && gathered >= 4 + messageLength) {
      // The TLS record that completes the hello must not carry another message after it:
      // a client sends nothing else until the server answers.
      if (gathered > 4 + messageLength) {
        throw new ClientHelloError(TlsErrorCode.Malformed, `${gathered - 4 - messageLength} bytes after the ClientHello in its TLS record`, locate(4 + messageLength));
      }
      const message = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
      return { done: true, hello: decodeBody(message.subarray(4), tlsRecordVersion, tlsRecordCount, (at) => locate(4 + at)), consumed: offset };
    }
  }
}

/**
 * Parses a ClientHello handshake message given whole, without TLS records: how QUIC carries
 * it (in CRYPTO frames, RFC 9001 §4). Offsets in errors count from the handshake header.
 * The hello's `tlsRecordVersion` and `tlsRecordCount` are then 0: there was no TLS record.
 */
export function parseClientHelloMessage(message: Buffer, maxBytes = 65_536): ClientHello {
  if (message.length < 4) throw new ClientHelloError(TlsErrorCode.Malformed, 'handshake header: truncated', 0);
  if (message[0] !== HANDSHAKE_CLIENT_HELLO) throw new ClientHelloError(TlsErrorCode.NotClientHello, `handshake type ${message[0]} is not ClientHello (1)`, 0);
  const length = message.readUIntBE(1, 3);
  if (length > maxBytes) throw new ClientHelloError(TlsErrorCode.TooLarge, `ClientHello of ${length} bytes exceeds ${maxBytes}`, 1);
  if (message.length !== 4 + length) throw new ClientHelloError(TlsErrorCode.Malformed, `handshake length ${length} does not match the ${message.length - 4} bytes given`, 1);
  return decodeBody(message.subarray(4), 0, 0, (at) => 4 + at);
}

/**
 * The stream offset of byte `at` of the handshake message, which may span TLS records: each
 * TLS record's 5-byte header lies between two fragments. The end of the message maps to the
 * end of its last TLS record.
 */
function streamOffset(fragments: readonly Buffer[], starts: readonly number[], at: number): number {
  let skipped = 0;
  for (let i = 0; i < fragments.length; i++) {
    const length = fragments[i]!.length;
    if (at < skipped + length || i === fragments.length - 1) return starts[i]! + at - skipped;
    skipped += length;
  }
  return at;
}

/** A cursor over the ClientHello body; `locate` turns body offsets into stream offsets for errors. */
class Reader {
  constructor(
    private readonly bytes: Buffer,
    private readonly locate: (at: number) => number,
    private position = 0,
    private readonly end = bytes.length,
  ) {}

  get remaining(): number {
    return this.end - this.position;
  }

  /** The stream offset of the next byte. */
  get offset(): number {
    return this.locate(this.position);
  }

  fail(message: string): never {
    throw new ClientHelloError(TlsErrorCode.Malformed, message, this.offset);
  }

  u8(what: string): number {
    if (this.remaining < 1) this.fail(`${what}: truncated`);
    return this.bytes[this.position++]!;
  }

  u16(what: string): number {
    if (this.remaining < 2) this.fail(`${what}: truncated`);
    const value = this.bytes.readUInt16BE(this.position);
    this.position += 2;
    return value;
  }

  take(length: number, what: string): Buffer {
    if (this.remaining < length) this.fail(`${what}: length ${length} runs past its container (${this.remaining} left)`);
    const slice = this.bytes.subarray(this.position, this.position + length);
    this.position += length;
    return slice;
  }

  /** A sub-reader over a length-prefixed vector. */
  vector(lengthBytes: 1 | 2, what: string): Reader {
    const length = lengthBytes === 1 ? this.u8(what) : this.u16(what);
    const start = this.position;
    this.take(length, what);
    return new Reader(this.bytes, this.locate, start, start + length);
  }

  u16List(what: string): number[] {
    if (this.remaining % 2 !== 0) this.fail(`${what}: odd length`);
    const values: number[] = [];
    while (this.remaining > 0) values.push(this.u16(what));
    return values;
  }

  done(what: string): void {
    if (this.remaining !== 0) this.fail(`${what}: ${this.remaining} bytes left over`);
  }
}

function decodeBody(body: Buffer, tlsRecordVersion: number, tlsRecordCount: number, locate: (at: number) => number): ClientHello {
  const r = new Reader(body, locate);
  const legacyVersion = r.u16('legacy_version');
  if (legacyVersion >> 8 !== 3) r.fail(`legacy_version 0x${legacyVersion.toString(16)} is not 3.x`);
  const random = Buffer.from(r.take(32, 'random'));
  const sessionIdReader = r.vector(1, 'session_id');
  if (sessionIdReader.remaining > 32) sessionIdReader.fail('session_id longer than 32 bytes');
  const sessionId = Buffer.from(sessionIdReader.take(sessionIdReader.remaining, 'session_id'));
  const suitesReader = r.vector(2, 'cipher_suites');
  if (suitesReader.remaining < 2) suitesReader.fail('cipher_suites is empty');
  const cipherSuites = suitesReader.u16List('cipher_suites');
  const compression = r.vector(1, 'compression_methods');
  if (compression.remaining < 1) compression.fail('compression_methods is empty');
  const compressionMethods: number[] = [];
  while (compression.remaining > 0) compressionMethods.push(compression.u8('compression_methods'));

  const hello = {
    legacyVersion,
    tlsRecordVersion,
    random,
    sessionId,
    cipherSuites,
    compressionMethods,
    extensions: [] as number[],
    serverName: undefined as string | undefined,
    serverNameAnomaly: undefined as SniAnomaly | undefined,
    serverNames: [] as ServerNameEntry[],
    alpn: [] as string[],
    supportedVersions: [] as number[],
    supportedGroups: [] as number[],
    ecPointFormats: [] as number[],
    signatureAlgorithms: [] as number[],
    ech: undefined as ClientHello['ech'],
    tlsRecordCount,
  };
  // A hello without extensions ends here (TLS 1.0/1.1 clients may send one).
  if (r.remaining === 0) return hello;
  const extensions = r.vector(2, 'extensions');
  r.done('ClientHello');
  const seen = new Set<number>();
  while (extensions.remaining > 0) {
    const at = extensions.offset;
    const type = extensions.u16('extension type');
    const data = extensions.vector(2, `extension 0x${type.toString(16)}`);
    if (seen.has(type)) throw new ClientHelloError(TlsErrorCode.DuplicateExtension, `extension 0x${type.toString(16).padStart(4, '0')} appears twice`, at);
    seen.add(type);
    hello.extensions.push(type);
    decodeExtension(type, data, hello);
  }
  return hello;
}

interface HelloUnderConstruction {
  serverName: string | undefined;
  serverNameAnomaly: SniAnomaly | undefined;
  serverNames: ServerNameEntry[];
  alpn: string[];
  supportedVersions: readonly number[];
  supportedGroups: readonly number[];
  ecPointFormats: readonly number[];
  signatureAlgorithms: readonly number[];
  ech: ClientHello['ech'];
}

function decodeExtension(type: number, data: Reader, hello: HelloUnderConstruction): void {
  switch (type) {
    case EXT_SERVER_NAME: {
      // An empty extension is legal in a ServerHello only, but some clients send it: no name.
      if (data.remaining === 0) {
        hello.serverNameAnomaly = 'empty-list';
        return;
      }
      const list = data.vector(2, 'server_name list');
      data.done('server_name');
      // Every entry is framed as a 16-bit vector: RFC 6066 defines only host_name, and
      // every implementation frames unknown types that way (it is the only way to skip them).
      while (list.remaining > 0) {
        const type = list.u8('server_name type');
        const name = list.vector(2, 'server_name');
        hello.serverNames.push({ type, name: name.take(name.remaining, 'server_name').toString('latin1') });
      }
      Object.assign(hello, readServerName(hello.serverNames));
      return;
    }
    case EXT_ALPN: {
      const list = data.vector(2, 'ALPN list');
      data.done('ALPN');
      if (list.remaining === 0) list.fail('ALPN list is empty');
      while (list.remaining > 0) {
        const protocol = list.vector(1, 'ALPN protocol');
        if (protocol.remaining === 0) protocol.fail('empty ALPN protocol name');
        hello.alpn.push(protocol.take(protocol.remaining, 'ALPN protocol').toString('latin1'));
      }
      return;
    }
    case EXT_SUPPORTED_VERSIONS: {
      const list = data.vector(1, 'supported_versions');
      data.done('supported_versions');
      hello.supportedVersions = list.u16List('supported_versions');
      return;
    }
    case EXT_SUPPORTED_GROUPS: {
      const list = data.vector(2, 'supported_groups');
      data.done('supported_groups');
      hello.supportedGroups = list.u16List('supported_groups');
      return;
    }
    case EXT_EC_POINT_FORMATS: {
      const list = data.vector(1, 'ec_point_formats');
      data.done('ec_point_formats');
      const formats: number[] = [];
      while (list.remaining > 0) formats.push(list.u8('ec_point_formats'));
      hello.ecPointFormats = formats;
      return;
    }
    case EXT_SIGNATURE_ALGORITHMS: {
      const list = data.vector(2, 'signature_algorithms');
      data.done('signature_algorithms');
      hello.signatureAlgorithms = list.u16List('signature_algorithms');
      return;
    }
    case EXT_ENCRYPTED_CLIENT_HELLO: {
      // draft-ietf-tls-esni: outer (0) carries cipher suite, config id, enc, payload.
      const echType = data.u8('ECH type');
      if (echType !== 0) return; // inner (1) is only ever inside the encrypted payload
      const kdf = data.u16('ECH kdf');
      const aead = data.u16('ECH aead');
      const configId = data.u8('ECH config_id');
      data.vector(2, 'ECH enc');
      const payload = data.vector(2, 'ECH payload');
      if (payload.remaining === 0) payload.fail('empty ECH payload');
      data.done('encrypted_client_hello');
      hello.ech = { configId, kdf, aead };
      return;
    }
    default:
      return; // other extensions are carried in `extensions` and not decoded
  }
}

/** A DNS name, lower case, without a trailing dot: labels of 1..63 letters, digits, '-' or '_' (seen in real names), 253 bytes at most. */
const DNS_NAME = /^[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*$/;
const MAX_DNS_NAME = 253;

/** The name the policy may match, and the anomaly, from the entries as sent. */
function readServerName(entries: readonly ServerNameEntry[]): { serverName: string | undefined; serverNameAnomaly: SniAnomaly | undefined } {
  if (entries.length === 0) return { serverName: undefined, serverNameAnomaly: 'empty-list' };
  let host: string | undefined;
  let hosts = 0;
  for (const entry of entries) {
    if (entry.type !== 0) continue;
    hosts++;
    host = entry.name;
  }
  if (hosts > 1) return { serverName: undefined, serverNameAnomaly: 'multiple-names' };
  if (host === undefined) return { serverName: undefined, serverNameAnomaly: 'not-host-name' };
  if (host.length === 0) return { serverName: undefined, serverNameAnomaly: 'empty-name' };
  const trailingDot = host.endsWith('.');
  const name = (trailingDot ? host.slice(0, -1) : host).toLowerCase();
  if (name.length > MAX_DNS_NAME) return { serverName: undefined, serverNameAnomaly: 'too-long' };
  if (!DNS_NAME.test(name)) return { serverName: undefined, serverNameAnomaly: 'invalid-name' };
  return { serverName: name, serverNameAnomaly: trailingDot ? 'trailing-dot' : hosts < entries.length ? 'not-host-name' : undefined };
}
