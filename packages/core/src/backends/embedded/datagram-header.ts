import { createHmac, type KeyObject } from 'node:crypto';
import { PeerNotAuthorisedError, ProxyHeaderIncompleteError, ProxyHeaderMalformedError } from '../../model/errors.js';
import { AUTH_TAG_BYTES, decodeFlowHeader, encodeFlowHeader, type FlowHeader, verifyFlowHeaderAuth } from './flow-header.js';
import { decodeProxyV2 } from './proxy-v2.js';

/**
 * The embedded backend's UDP framing: every datagram to a redirector's datagram listener
 * starts with the same flow header as a TCP connection (PROXY v2 with coproxy's TLVs:
 * records, context, pid, and the HMAC tag made with the redirector's secret), with the
 * transport nibble saying DGRAM (0x12 over IPv4, 0x22 over IPv6), as PROXY v2 defines for
 * UDP. One header per datagram, not only on the first: UDP may lose or reorder the first,
 * and each datagram is then authenticated on its own.
 *
 * The TCP codec (proxy-v2.ts) writes and reads STREAM; here the byte is rewritten before
 * the tag is computed, so the tag covers DGRAM, and a copy with STREAM is given to the
 * TCP decoder for the fields. A header made for a TCP listener is refused here (STREAM),
 * and one made here is refused by a TCP listener (DGRAM), whatever the tag.
 */
const STREAM_TO_DGRAM = new Map([
  [0x11, 0x12],
  [0x21, 0x22],
]);
const DGRAM_TO_STREAM = new Map([
  [0x12, 0x11],
  [0x22, 0x21],
]);
const TRANSPORT_BYTE = 13;

export function encodeDatagramHeader(flow: FlowHeader, key: KeyObject): Buffer {
  const header = encodeFlowHeader(flow, key);
  header[TRANSPORT_BYTE] = STREAM_TO_DGRAM.get(header[TRANSPORT_BYTE]!)!;
  const signed = header.length - AUTH_TAG_BYTES;
  createHmac('sha256', key).update(header.subarray(0, signed)).digest().copy(header, signed);
  return header;
}

/**
 * Splits a received datagram into its verified flow header and payload. Throws
 * `COPROXY_PEER_NOT_AUTHORISED` for a missing or wrong tag (before any TLV is read),
 * `COPROXY_PROXY_HEADER_*` for anything malformed.
 */
export function decodeDatagram(
  datagram: Buffer,
  key: KeyObject,
  options: { readonly redirectorId: string; readonly maxHeaderBytes: number; readonly peerUid: () => number | undefined },
): { readonly flow: FlowHeader; readonly payload: Buffer } {
  const stream = DGRAM_TO_STREAM.get(datagram[TRANSPORT_BYTE] ?? -1);
  if (datagram.length > TRANSPORT_BYTE && stream === undefined) {
    throw new ProxyHeaderMalformedError(`transport/family byte 0x${datagram[TRANSPORT_BYTE]!.toString(16)} is not UDP over IPv4 or IPv6`);
  }
  const copy = Buffer.from(datagram.subarray(0, Math.min(datagram.length, options.maxHeaderBytes)));
  if (stream !== undefined) copy[TRANSPORT_BYTE] = stream;
  const decoded = decodeProxyV2(copy, options.maxHeaderBytes);
  if (decoded === undefined) throw new ProxyHeaderIncompleteError(datagram.length);
  const refused = verifyFlowHeaderAuth(datagram.subarray(0, decoded.length), decoded.header, key);
  if (refused !== undefined) throw new PeerNotAuthorisedError(options.redirectorId, refused, options.peerUid());
  return { flow: decodeFlowHeader(decoded.header), payload: datagram.subarray(decoded.length) };
}
