// Builds ClientHellos byte by byte from fields, for the parser's and fingerprints' tests:
// TLS records, handshake header, body and extensions, each length computed here, so a test
// can state a hello by what it says and still get every length right (or wrong on
// purpose, by patching the bytes afterwards). Not part of the build.

/** One extension as it goes on the wire: type and opaque data. */
export interface Extension {
  readonly type: number;
  readonly data: Buffer;
}

export interface HelloFields {
  /** Default 0x0303. */
  readonly legacyVersion?: number;
  /** Default 32 bytes 0x00..0x1f. */
  readonly random?: Buffer;
  /** Default empty. */
  readonly sessionId?: Buffer;
  /** Default [0x1301]. */
  readonly cipherSuites?: readonly number[];
  /** Default [0] (null). */
  readonly compressionMethods?: readonly number[];
  /** `undefined` leaves out the extensions block entirely (a TLS 1.0-style hello). Default []. */
  readonly extensions?: readonly Extension[] | undefined;
}

export const u8 = (value: number): Buffer => Buffer.from([value]);
export const u16 = (value: number): Buffer => Buffer.from([value >> 8, value & 0xff]);
export const u24 = (value: number): Buffer => Buffer.from([value >> 16, (value >> 8) & 0xff, value & 0xff]);

/** `bytes` behind a length prefix of `lengthBytes` bytes. */
export function vector(lengthBytes: 1 | 2 | 3, bytes: Buffer): Buffer {
  const prefix = lengthBytes === 1 ? u8(bytes.length) : lengthBytes === 2 ? u16(bytes.length) : u24(bytes.length);
  return Buffer.concat([prefix, bytes]);
}

const u16s = (values: readonly number[]): Buffer => Buffer.concat(values.map(u16));

/** Builders for the extensions the parser decodes, and any other as raw bytes. */
export const ext = {
  raw: (type: number, data: Buffer = Buffer.alloc(0)): Extension => ({ type, data }),
  /** server_name with one host_name entry per name (more than one is what the parser refuses). */
  serverName: (...names: string[]): Extension => ({
    type: 0x0000,
    data: vector(2, Buffer.concat(names.map((name) => Buffer.concat([u8(0), vector(2, Buffer.from(name, 'latin1'))])))),
  }),
  /** server_name with entries of any name type and any bytes (RFC 6066 §3), for the unusual cases. */
  serverNameEntries: (...entries: { type: number; name: Buffer | string }[]): Extension => ({
    type: 0x0000,
    data: vector(
      2,
      Buffer.concat(entries.map(({ type, name }) => Buffer.concat([u8(type), vector(2, typeof name === 'string' ? Buffer.from(name, 'latin1') : name)]))),
    ),
  }),
  alpn: (...protocols: string[]): Extension => ({
    type: 0x0010,
    data: vector(2, Buffer.concat(protocols.map((protocol) => vector(1, Buffer.from(protocol, 'latin1'))))),
  }),
  supportedVersions: (...versions: number[]): Extension => ({ type: 0x002b, data: vector(1, u16s(versions)) }),
  supportedGroups: (...groups: number[]): Extension => ({ type: 0x000a, data: vector(2, u16s(groups)) }),
  ecPointFormats: (...formats: number[]): Extension => ({ type: 0x000b, data: vector(1, Buffer.from(formats)) }),
  signatureAlgorithms: (...schemes: number[]): Extension => ({ type: 0x000d, data: vector(2, u16s(schemes)) }),
  /** An outer encrypted_client_hello (draft-ietf-tls-esni §5): type 0, suite, config id, enc, payload. */
  echOuter: (fields: { kdf: number; aead: number; configId: number; enc: Buffer; payload: Buffer }): Extension => ({
    type: 0xfe0d,
    data: Buffer.concat([u8(0), u16(fields.kdf), u16(fields.aead), u8(fields.configId), vector(2, fields.enc), vector(2, fields.payload)]),
  }),
};

export const DEFAULT_RANDOM = Buffer.from(Array.from({ length: 32 }, (_, i) => i));

/** The ClientHello body (RFC 8446 §4.1.2), after the handshake header. */
export function helloBody(fields: HelloFields = {}): Buffer {
  const parts = [
    u16(fields.legacyVersion ?? 0x0303),
    fields.random ?? DEFAULT_RANDOM,
    vector(1, fields.sessionId ?? Buffer.alloc(0)),
    vector(2, u16s(fields.cipherSuites ?? [0x1301])),
    vector(1, Buffer.from(fields.compressionMethods ?? [0])),
  ];
  const extensions = 'extensions' in fields ? fields.extensions : [];
  if (extensions !== undefined) {
    parts.push(vector(2, Buffer.concat(extensions.map((e) => Buffer.concat([u16(e.type), vector(2, e.data)])))));
  }
  return Buffer.concat(parts);
}

/** A handshake message: type (1 = ClientHello), 24-bit length, body. */
export function handshake(body: Buffer, type = 1): Buffer {
  return Buffer.concat([u8(type), vector(3, body)]);
}

export interface TlsRecordOptions {
  /** Fragment sizes in order; the last one repeats until the message is used up. Default one TLS record. */
  readonly sizes?: readonly number[];
  /** Record layer version. Default 0x0301, as most clients send in the first flight. */
  readonly version?: number;
  /** Content type. Default 22 (handshake). */
  readonly type?: number;
}

/** Cuts `message` into TLS records (RFC 8446 §5.1). */
export function tlsRecords(message: Buffer, options: TlsRecordOptions = {}): Buffer {
  const sizes = options.sizes ?? [message.length];
  const out: Buffer[] = [];
  let offset = 0;
  let index = 0;
  while (offset < message.length) {
    const size = Math.min(sizes[Math.min(index++, sizes.length - 1)]!, message.length - offset);
    if (size <= 0) throw new RangeError('TLS record sizes must be positive');
    out.push(u8(options.type ?? 22), u16(options.version ?? 0x0301), u16(size), message.subarray(offset, offset + size));
    offset += size;
  }
  return Buffer.concat(out);
}

/** A whole ClientHello as a client sends it: TLS records around the handshake message. */
export function clientHello(fields: HelloFields = {}, tlsRecordOptions: TlsRecordOptions = {}): Buffer {
  return tlsRecords(handshake(helloBody(fields)), tlsRecordOptions);
}

/** `bytes` cut at the given offsets (TCP segments). */
export function segments(bytes: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.filter((cut) => cut > 0 && cut < bytes.length))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let start = 0;
  for (const point of [...points, bytes.length]) {
    out.push(bytes.subarray(start, point));
    start = point;
  }
  return out;
}

/**
 * A hello with GREASE (RFC 8701) in every list the parser reads: cipher suites, extension
 * types, supported_versions, supported_groups, signature_algorithms, and ALPN (whose GREASE
 * form is a two-byte protocol name, RFC 8701 §2, kept by the parser as any name; last, so the
 * first ALPN value, which JA4 reads, is a real one). Point formats are single bytes: no GREASE.
 */
export const GREASY_FIELDS: HelloFields = {
  sessionId: Buffer.alloc(32, 0xee),
  cipherSuites: [0x0a0a, 0x1301, 0x1302, 0xc02b, 0x3a3a],
  extensions: [
    ext.raw(0x1a1a),
    ext.serverName('Greasy.Example'),
    ext.alpn('h2', 'http/1.1', '\x3a\x3a'),
    ext.supportedVersions(0x2a2a, 0x0304, 0x0303),
    ext.supportedGroups(0x4a4a, 0x001d, 0x0017),
    ext.ecPointFormats(0),
    ext.signatureAlgorithms(0x5a5a, 0x0403, 0x0804),
    ext.raw(0xfafa, Buffer.from([0])),
  ],
};
