import net from 'node:net';
import { ProxyHeaderMalformedError, ProxyHeaderTooLargeError } from '../../model/errors.js';
import { addressToBytes, bytesToAddress, isV4Mapped } from '../../model/ip-address.js';

/**
 * PROXY protocol version 2 (HAProxy's spec, section 2.2): a binary header that starts a
 * relayed TCP connection and states its original source and destination, followed by
 * type-length-value extensions. Only what a redirected TCP stream needs is accepted:
 * command PROXY over TCP/IPv4 or TCP/IPv6. LOCAL, UDP and UNIX are rejected.
 */
export const PROXY_V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
export const PROXY_V2_FIXED_BYTES = 16;

const VERSION_2_PROXY = 0x21;
const TCP_OVER_IPV4 = 0x11;
const TCP_OVER_IPV6 = 0x21;

export interface ProxyV2Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface ProxyV2Tlv {
  readonly type: number;
  readonly value: Buffer;
}

export interface ProxyV2Header {
  readonly source: ProxyV2Endpoint;
  readonly destination: ProxyV2Endpoint & { readonly family: 4 | 6 };
  readonly tlvs: readonly ProxyV2Tlv[];
}

/**
 * Encodes a header. When the two endpoints differ in family both are written as IPv6,
 * IPv4 ones as IPv4-mapped; the decoder maps them back.
 */
export function encodeProxyV2(header: Omit<ProxyV2Header, 'destination'> & { destination: ProxyV2Endpoint }): Buffer {
  let source = addressToBytes(header.source.address);
  let destination = addressToBytes(header.destination.address);
  if (source.length !== destination.length) {
    if (source.length === 4) source = Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), source]);
    else destination = Buffer.concat([Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]), destination]);
  }
  if (header.destination.port < 1 || header.destination.port > 0xffff) throw new RangeError('destination port out of range');
  let tlvBytes = 0;
  for (const tlv of header.tlvs) {
    if (tlv.type < 0 || tlv.type > 0xff || tlv.value.length > 0xffff) throw new RangeError('TLV out of range');
    tlvBytes += 3 + tlv.value.length;
  }
  const addressBytes = source.length * 2 + 4;
  const length = addressBytes + tlvBytes;
  if (length > 0xffff) throw new RangeError(`PROXY v2 header body of ${length} bytes does not fit`);

  const out = Buffer.allocUnsafe(PROXY_V2_FIXED_BYTES + length);
  PROXY_V2_SIGNATURE.copy(out, 0);
  out[12] = VERSION_2_PROXY;
  out[13] = source.length === 4 ? TCP_OVER_IPV4 : TCP_OVER_IPV6;
  out.writeUInt16BE(length, 14);
  let offset = PROXY_V2_FIXED_BYTES;
  offset += source.copy(out, offset);
  offset += destination.copy(out, offset);
  offset = out.writeUInt16BE(header.source.port, offset);
  offset = out.writeUInt16BE(header.destination.port, offset);
  for (const tlv of header.tlvs) {
    out[offset] = tlv.type;
    offset = out.writeUInt16BE(tlv.value.length, offset + 1);
    offset += tlv.value.copy(out, offset);
  }
  return out;
}

/**
 * Parses a header from the start of `data`. Returns `undefined` while more bytes are
 * needed, else the header and its total length. Checks the signature as soon as the
 * first bytes arrive, so a peer that speaks something else is refused at once.
 */
export function decodeProxyV2(
  data: Buffer,
  maxHeaderBytes: number,
): { header: ProxyV2Header; length: number } | undefined {
  const prefix = Math.min(data.length, PROXY_V2_SIGNATURE.length);
  if (!data.subarray(0, prefix).equals(PROXY_V2_SIGNATURE.subarray(0, prefix))) {
    throw new ProxyHeaderMalformedError('the connection does not start with the PROXY v2 signature');
  }
  if (data.length < PROXY_V2_FIXED_BYTES) return undefined;
  if (data[12] !== VERSION_2_PROXY) {
    throw new ProxyHeaderMalformedError(`version/command byte 0x${data[12]!.toString(16)} is not v2 PROXY`);
  }
  const protocol = data[13];
  const length = data.readUInt16BE(14);
  const total = PROXY_V2_FIXED_BYTES + length;
  if (total > maxHeaderBytes) throw new ProxyHeaderTooLargeError(total, maxHeaderBytes);

  const addressLength = protocol === TCP_OVER_IPV4 ? 4 : protocol === TCP_OVER_IPV6 ? 16 : 0;
  if (addressLength === 0) {
    throw new ProxyHeaderMalformedError(`transport/family byte 0x${protocol!.toString(16)} is not TCP over IPv4 or IPv6`);
  }
  const addressBlock = addressLength * 2 + 4;
  if (length < addressBlock) throw new ProxyHeaderMalformedError(`length ${length} shorter than the address block`);
  if (data.length < total) return undefined;

  let offset = PROXY_V2_FIXED_BYTES;
  const sourceBytes = data.subarray(offset, (offset += addressLength));
  const destinationBytes = data.subarray(offset, (offset += addressLength));
  const sourcePort = data.readUInt16BE(offset);
  const destinationPort = data.readUInt16BE(offset + 2);
  offset += 4;
  if (destinationPort === 0) throw new ProxyHeaderMalformedError('destination port 0');

  const tlvs: ProxyV2Tlv[] = [];
  while (offset < total) {
    if (offset + 3 > total) throw new ProxyHeaderMalformedError(`TLV header truncated at byte ${offset}`);
    const type = data[offset]!;
    const valueLength = data.readUInt16BE(offset + 1);
    if (offset + 3 + valueLength > total) {
      throw new ProxyHeaderMalformedError(`TLV 0x${type.toString(16)} of ${valueLength} bytes overruns the header`);
    }
    // Copy: the TLV outlives the read buffer, which the socket may reuse.
    tlvs.push({ type, value: Buffer.from(data.subarray(offset + 3, offset + 3 + valueLength)) });
    offset += 3 + valueLength;
  }

  const destination = unmapped(destinationBytes);
  return {
    header: {
      source: { address: unmapped(sourceBytes).address, port: sourcePort },
      destination: { ...destination, port: destinationPort },
      tlvs,
    },
    length: total,
  };
}

function unmapped(bytes: Buffer): { address: string; family: 4 | 6 } {
  const plain = isV4Mapped(bytes) ? bytes.subarray(12) : bytes;
  const address = bytesToAddress(plain);
  return { address, family: net.isIPv4(address) ? 4 : 6 };
}
