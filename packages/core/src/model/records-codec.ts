import { RecordsMalformedError } from './errors.js';
import { MAX_REDIRECTS, RedirectRecords } from './redirect-records.js';
import { MAX_REDIRECTOR_ID_LENGTH, REDIRECTOR_ID_PATTERN } from './redirector-id.js';

/**
 * Wire encoding of redirect records, version 1:
 *
 * ```
 * u8 version (= 1) | u8 count (0..16) | count × ( u8 length (1..32) | length × ASCII [a-z0-9-] )
 * ```
 *
 * At most 2 + 16 × 33 = 530 bytes. Decoding is strict: unknown version, count over the
 * bound, an id of bad length or characters, a repeated id, or trailing bytes all raise
 * `RecordsMalformedError` with the offending offset.
 */
export const RECORDS_VERSION = 1;
export const MAX_RECORDS_BYTES = 2 + MAX_REDIRECTS * (1 + MAX_REDIRECTOR_ID_LENGTH);

export function encodeRecords(records: RedirectRecords): Buffer {
  const ids = records.redirectedBy;
  let size = 2;
  for (const id of ids) size += 1 + id.length;
  const out = Buffer.allocUnsafe(size);
  out[0] = RECORDS_VERSION;
  out[1] = ids.length;
  let offset = 2;
  for (const id of ids) {
    out[offset++] = id.length;
    offset += out.write(id, offset, 'latin1');
  }
  return out;
}

export function decodeRecords(blob: Uint8Array): RedirectRecords {
  if (blob.length > MAX_RECORDS_BYTES) {
    throw new RecordsMalformedError(`${blob.length} bytes exceed the bound of ${MAX_RECORDS_BYTES}`, MAX_RECORDS_BYTES);
  }
  if (blob.length < 2) throw new RecordsMalformedError('shorter than the 2-byte preamble', blob.length);
  if (blob[0] !== RECORDS_VERSION) {
    throw new RecordsMalformedError(`unsupported version ${blob[0]}`, 0);
  }
  const count = blob[1]!;
  if (count > MAX_REDIRECTS) throw new RecordsMalformedError(`${count} redirects exceed ${MAX_REDIRECTS}`, 1);

  const ids: string[] = [];
  let offset = 2;
  for (let i = 0; i < count; i++) {
    const length = blob[offset];
    if (length === undefined) throw new RecordsMalformedError(`truncated before redirect ${i}`, offset);
    if (length === 0 || length > MAX_REDIRECTOR_ID_LENGTH) {
      throw new RecordsMalformedError(`redirector id length ${length} outside 1..${MAX_REDIRECTOR_ID_LENGTH}`, offset);
    }
    if (offset + 1 + length > blob.length) throw new RecordsMalformedError(`redirect ${i} truncated`, offset);
    const id = Buffer.from(blob.buffer, blob.byteOffset + offset + 1, length).toString('latin1');
    if (!REDIRECTOR_ID_PATTERN.test(id)) throw new RecordsMalformedError(`invalid redirector id`, offset + 1);
    if (ids.includes(id)) throw new RecordsMalformedError(`redirector '${id}' appears twice`, offset + 1);
    ids.push(id);
    offset += 1 + length;
  }
  if (offset !== blob.length) throw new RecordsMalformedError(`${blob.length - offset} trailing bytes`, offset);
  return RedirectRecords.fromValidatedIds(ids);
}
