import { createHmac, timingSafeEqual, type KeyObject } from 'node:crypto';
import { type PeerNotAuthorisedReason, ProxyHeaderMalformedError } from '../../model/errors.js';
import { decodeRecords, encodeRecords } from '../../model/records-codec.js';
import type { RedirectRecords } from '../../model/redirect-records.js';
import { isRedirectorId } from '../../model/redirector-id.js';
import { MAX_CONTEXT_BYTES } from '../../model/flow.js';
import type { ProxyV2Endpoint, ProxyV2Header, ProxyV2Tlv } from './proxy-v2.js';
import { encodeProxyV2 } from './proxy-v2.js';

/**
 * coproxy's use of the PROXY v2 application range (0xE0–0xEF):
 *
 * | type | value |
 * |------|-------|
 * | 0xE0 | redirect records (records codec v1), required |
 * | 0xE1 | context: u8 owner id length, owner id, then the context bytes (≤ 1024) |
 * | 0xE2 | originating process id, u32 big-endian |
 * | 0xE3 | authentication: HMAC-SHA256 with the redirector's secret, 32 bytes; the last TLV |
 *
 * Other TLV types, the rest of the range included (reserved for later versions), are
 * ignored, as the PROXY spec asks of receivers; one of the first three appearing twice is
 * an error.
 *
 * The authentication TLV proves the header was made by a process that could read the
 * redirector's registry entry (mode 0600 in a 0700 directory: its owner, or root). Its
 * HMAC covers every byte of the header before the tag itself (signature, addresses,
 * length, every other TLV and the 0xE3 type and length bytes), so nothing in the header
 * can be changed or appended without the secret, and the secret itself never crosses
 * the socket: a header that is logged or captured does not reveal it.
 */
export const TLV_RECORDS = 0xe0;
export const TLV_CONTEXT = 0xe1;
export const TLV_PID = 0xe2;
export const TLV_AUTH = 0xe3;
/** Bytes of the HMAC-SHA256 tag in the authentication TLV. */
export const AUTH_TAG_BYTES = 32;

export interface FlowContext {
  readonly owner: string;
  readonly bytes: Buffer;
}

/** Everything a redirected connection announces before its first byte of payload. */
export interface FlowHeader {
  readonly source: ProxyV2Endpoint;
  readonly destination: ProxyV2Endpoint & { readonly family: 4 | 6 };
  readonly records: RedirectRecords;
  readonly context?: FlowContext;
  readonly pid?: number;
}

/**
 * Encodes a flow's header. With `key` (the redirector's secret, from its registry entry)
 * the header ends with the authentication TLV, which an embedded listener requires.
 */
export function encodeFlowHeader(flow: FlowHeader, key?: KeyObject): Buffer {
  const tlvs: ProxyV2Tlv[] = [{ type: TLV_RECORDS, value: encodeRecords(flow.records) }];
  if (flow.context !== undefined) {
    if (!isRedirectorId(flow.context.owner) || flow.context.bytes.length > MAX_CONTEXT_BYTES) {
      throw new RangeError('context owner must be a redirector id and the context at most 1024 bytes');
    }
    const owner = Buffer.from(flow.context.owner, 'latin1');
    tlvs.push({ type: TLV_CONTEXT, value: Buffer.concat([Buffer.from([owner.length]), owner, flow.context.bytes]) });
  }
  if (flow.pid !== undefined) {
    const pid = Buffer.allocUnsafe(4);
    pid.writeUInt32BE(flow.pid);
    tlvs.push({ type: TLV_PID, value: pid });
  }
  if (key === undefined) return encodeProxyV2({ source: flow.source, destination: flow.destination, tlvs });
  tlvs.push({ type: TLV_AUTH, value: Buffer.alloc(AUTH_TAG_BYTES) });
  const header = encodeProxyV2({ source: flow.source, destination: flow.destination, tlvs });
  const signed = header.length - AUTH_TAG_BYTES;
  authTag(key, header.subarray(0, signed)).copy(header, signed);
  return header;
}

function authTag(key: KeyObject, signed: Buffer): Buffer {
  return createHmac('sha256', key).update(signed).digest();
}

/**
 * Checks a received header's authentication TLV against `key`: `raw` is the header's
 * bytes as received, `header` their decoding. Returns why it fails, or `undefined` when it
 * verifies. The tag must be the last TLV, so no byte follows it unauthenticated; it is
 * compared in constant time.
 */
export function verifyFlowHeaderAuth(
  raw: Buffer,
  header: ProxyV2Header,
  key: KeyObject,
): PeerNotAuthorisedReason | undefined {
  const last = header.tlvs[header.tlvs.length - 1];
  if (last === undefined || last.type !== TLV_AUTH) {
    return header.tlvs.some((tlv) => tlv.type === TLV_AUTH) ? 'bad-credential' : 'no-credential';
  }
  if (last.value.length !== AUTH_TAG_BYTES) return 'bad-credential';
  // The decoder read the TLVs up to the header's end, so the tag is its last bytes.
  const signed = raw.length - AUTH_TAG_BYTES;
  return timingSafeEqual(authTag(key, raw.subarray(0, signed)), last.value) ? undefined : 'bad-credential';
}

export function decodeFlowHeader(header: ProxyV2Header): FlowHeader {
  let records: RedirectRecords | undefined;
  let context: FlowContext | undefined;
  let pid: number | undefined;
  const seen = new Set<number>();
  for (const { type, value } of header.tlvs) {
    if (type !== TLV_RECORDS && type !== TLV_CONTEXT && type !== TLV_PID) continue;
    if (seen.has(type)) throw new ProxyHeaderMalformedError(`TLV 0x${type.toString(16)} appears twice`);
    seen.add(type);
    switch (type) {
      case TLV_RECORDS:
        records = decodeRecords(value);
        break;
      case TLV_CONTEXT:
        context = decodeContext(value);
        break;
      case TLV_PID:
        if (value.length !== 4) throw new ProxyHeaderMalformedError(`pid TLV of ${value.length} bytes, not 4`);
        pid = value.readUInt32BE(0);
        break;
    }
  }
  if (records === undefined) throw new ProxyHeaderMalformedError('no redirect records TLV (0xE0)');
  return {
    source: header.source,
    destination: header.destination,
    records,
    ...(context !== undefined && { context }),
    ...(pid !== undefined && { pid }),
  };
}

function decodeContext(value: Buffer): FlowContext {
  const ownerLength = value[0] ?? 0;
  const owner = value.subarray(1, 1 + ownerLength).toString('latin1');
  if (value.length < 1 + ownerLength || !isRedirectorId(owner)) {
    throw new ProxyHeaderMalformedError('context TLV has no valid owner id');
  }
  const bytes = value.subarray(1 + ownerLength);
  if (bytes.length > MAX_CONTEXT_BYTES) {
    throw new ProxyHeaderMalformedError(`context of ${bytes.length} bytes exceeds ${MAX_CONTEXT_BYTES}`);
  }
  return { owner, bytes };
}
