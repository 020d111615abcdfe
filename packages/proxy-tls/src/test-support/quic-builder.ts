// Builds client QUIC Initial packets for the reader's tests: frames are protected the way a
// client protects them (RFC 9001 §5: AEAD_AES_128_GCM, then the header-protection mask), so
// a test can state what an Initial carries and get a packet the reader must accept (or
// change its bytes afterwards on purpose). Not part of the build.
import { createCipheriv } from 'node:crypto';
import { QUIC_V1, QUIC_V2, deriveClientInitialKeys } from '../quic-initial.js';
import { ext, handshake, helloBody } from './hello-builder.js';

/** A QUIC variable-length integer (RFC 9000 §16), in its shortest form. */
export function varint(value: number): Buffer {
  if (value < 0x40) return Buffer.from([value]);
  if (value < 0x4000) return Buffer.from([0x40 | (value >> 8), value & 0xff]);
  if (value < 0x4000_0000) {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32BE(value);
    bytes[0]! |= 0x80;
    return bytes;
  }
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(value));
  bytes[0]! |= 0xc0;
  return bytes;
}

/** A CRYPTO frame carrying `data` at `offset` of the Initial CRYPTO stream. */
export const cryptoFrame = (offset: number, data: Buffer): Buffer => Buffer.concat([Buffer.from([0x06]), varint(offset), varint(data.length), data]);

export interface InitialOptions {
  readonly dcid: Buffer;
  readonly scid?: Buffer;
  readonly version?: number;
  readonly packetNumber: number;
  readonly frames: readonly Buffer[];
  /** Pad the payload with PADDING frames to this many bytes. */
  readonly payloadLength?: number;
}

/** One protected client Initial packet with a 2-byte packet number. */
export function buildInitial(options: InitialOptions): Buffer {
  const version = options.version ?? QUIC_V1;
  const keys = deriveClientInitialKeys(version, options.dcid);
  const scid = options.scid ?? Buffer.alloc(0);
  let payload = Buffer.concat(options.frames);
  // Header protection samples 16 bytes from 4 bytes after the packet number's start.
  const minimum = Math.max(options.payloadLength ?? 0, 4 - 2);
  if (payload.length < minimum) payload = Buffer.concat([payload, Buffer.alloc(minimum - payload.length)]);
  const pnLength = 2;
  const type = version === QUIC_V2 ? 1 : 0;
  const versionBytes = Buffer.alloc(4);
  versionBytes.writeUInt32BE(version);
  const length = pnLength + payload.length + 16;
  const header = Buffer.concat([
    Buffer.from([0xc0 | (type << 4) | (pnLength - 1)]),
    versionBytes,
    Buffer.from([options.dcid.length]),
    options.dcid,
    Buffer.from([scid.length]),
    scid,
    varint(0),
    Buffer.from([0x40 | (length >> 8), length & 0xff]),
    Buffer.from([(options.packetNumber >> 8) & 0xff, options.packetNumber & 0xff]),
  ]);
  const nonce = Buffer.from(keys.iv);
  nonce.writeUInt32BE((nonce.readUInt32BE(8) ^ options.packetNumber) >>> 0, 8);
  const gcm = createCipheriv('aes-128-gcm', keys.key, nonce);
  gcm.setAAD(header);
  const sealed = Buffer.concat([gcm.update(payload), gcm.final(), gcm.getAuthTag()]);
  const packet = Buffer.concat([header, sealed]);
  const pnOffset = header.length - pnLength;
  const mask = createCipheriv('aes-128-ecb', keys.hp, null)
    .setAutoPadding(false)
    .update(packet.subarray(pnOffset + 4, pnOffset + 20));
  packet[0]! ^= mask[0]! & 0x0f;
  for (let i = 0; i < pnLength; i++) packet[pnOffset + i]! ^= mask[1 + i]!;
  return packet;
}

/** One Initial padded (inside, with PADDING frames) to a 1200-byte datagram. */
export function buildInitialDatagram(options: InitialOptions): Buffer {
  // The header's length field is always two bytes here, so the packet grows byte for byte with the payload.
  const payload = Math.max(Buffer.concat(options.frames).length, 2);
  const bare = buildInitial({ ...options, payloadLength: payload });
  return buildInitial({ ...options, payloadLength: payload + Math.max(0, 1200 - bare.length) });
}

/** A TLS 1.3 ClientHello handshake message (header included) as a QUIC client sends it. */
export function sampleHelloMessage(name: string, alpn: readonly string[], options: { duplicateSni?: boolean } = {}): Buffer {
  const extensions = [
    ext.serverName(name),
    ext.alpn(...alpn),
    ext.supportedVersions(0x0304),
    ext.supportedGroups(0x001d, 0x0017),
    ext.signatureAlgorithms(0x0403, 0x0804),
    ext.raw(0x0039, Buffer.from('0104800075300f00', 'hex')), // quic_transport_parameters
  ];
  if (options.duplicateSni === true) extensions.push(ext.serverName(name));
  return handshake(helloBody({ cipherSuites: [0x1301, 0x1302, 0x1303], extensions }));
}
