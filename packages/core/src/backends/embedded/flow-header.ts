import { ProxyHeaderMalformedError } from '../../errors.js';
import { decodeRecords, encodeRecords } from '../../records/records-codec.js';
import type { RedirectRecords } from '../../records/redirect-records.js';
import { isRedirectorId } from '../../records/redirector-id.js';
import { MAX_CONTEXT_BYTES } from '../../redirector/redirector-options.js';
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
 *
 * Other TLV types, the rest of the range included (reserved for later versions), are
 * ignored, as the PROXY spec asks of receivers; one of the three above appearing twice is
 * an error.
 */
export const TLV_RECORDS = 0xe0;
export const TLV_CONTEXT = 0xe1;
export const TLV_PID = 0xe2;

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

export function encodeFlowHeader(flow: FlowHeader): Buffer {
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
  return encodeProxyV2({ source: flow.source, destination: flow.destination, tlvs });
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
