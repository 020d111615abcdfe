import { ContextNotFoundError, WfpIoctlError } from '../../model/errors.js';
import { type WfpIoctl, Win32Error, ioctlCode, win32ErrorName } from './ioctl-codes.js';
import { type SocketHandle, type Winsock, winsock } from './winsock.js';

/** The first query buffer: a few KiB, above the "approximately 1 KB" Microsoft suggests. */
export const QUERY_INITIAL_BYTES = 4096;
/** The largest blob a query will grow to; past it the query fails rather than allocate on. */
export const QUERY_MAX_BYTES = 64 * 1024;

/**
 * The three WFP redirect ioctls, on SOCKETs this process owns. Records and context are
 * opaque blobs owned by the OS: they are returned and passed on byte for byte.
 */
export interface RedirectIoctls {
  /**
   * `SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS` on an accepted socket: the blob, exactly as
   * many bytes as the call returned; `undefined` when the connection carries none (not
   * found, or found empty): WFP did not redirect it.
   */
  queryRecords(socket: SocketHandle): Buffer | undefined;
  /**
   * `SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT`: the context this redirector's callout
   * attached. Throws `ContextNotFoundError` when there is none (not found, or found empty),
   * `WfpIoctlError` otherwise (access denied: it belongs to another redirector).
   */
  queryContext(socket: SocketHandle, redirectorId: string): Buffer;
  /** `SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS` on a new socket, before connect; the exact length. */
  setRecords(socket: SocketHandle, records: Buffer): void;
}

/**
 * How "the buffer is too small" comes back, which the two Microsoft pages describe
 * differently: the WSK page says STATUS_BUFFER_TOO_SMALL with the required size in the
 * returned count (in user mode: `ERROR_INSUFFICIENT_BUFFER`, or Winsock's `WSAENOBUFS`;
 * `ERROR_MORE_DATA` is STATUS_BUFFER_OVERFLOW's form), the SDK page says `WSAEINVAL` with a
 * zero count. Which one ws2_32 really returns has not been observed here.
 */
const TOO_SMALL = new Set<number>([Win32Error.WSAENOBUFS, Win32Error.ERROR_INSUFFICIENT_BUFFER, Win32Error.ERROR_MORE_DATA]);

type QueryResult = { readonly ok: true; readonly bytes: Buffer } | { readonly ok: false; readonly error: number };

/** The ioctl layer over a set of Winsock functions (ws2_32.dll unless a test injected a stand-in). */
export function redirectIoctls(ws: Winsock = winsock()): RedirectIoctls {
  return {
    queryRecords(socket) {
      const result = query(ws, socket, 'SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS');
      if (result.ok) return result.bytes.length === 0 ? undefined : result.bytes;
      if (result.error === Win32Error.ERROR_NOT_FOUND) return undefined;
      throw ioctlError('SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS', result.error);
    },
    queryContext(socket, redirectorId) {
      const result = query(ws, socket, 'SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT');
      if (result.ok) {
        if (result.bytes.length === 0) throw new ContextNotFoundError(redirectorId);
        return result.bytes;
      }
      if (result.error === Win32Error.ERROR_NOT_FOUND) throw new ContextNotFoundError(redirectorId);
      throw ioctlError('SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT', result.error);
    },
    setRecords(socket, records) {
      const returned: [number] = [0];
      const code = ioctlCode.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;
      if (ws.WSAIoctl(socket, code, records, records.length, null, 0, returned, null, null) !== 0) {
        throw ioctlError('SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS', ws.WSAGetLastError());
      }
    },
  };
}

/**
 * A query with size negotiation: start with QUERY_INITIAL_BYTES; when the call says the
 * buffer is too small, ask again with the size it reported, or with twice the size when
 * it reported none (WSAEINVAL with a zero count, or a too-small error with a count that is
 * no larger), up to QUERY_MAX_BYTES. A WSAEINVAL that persists up to the bound is reported
 * as WSAEINVAL: then it was not about the size.
 */
function query(ws: Winsock, socket: SocketHandle, ioctl: WfpIoctl): QueryResult {
  const code = ioctlCode[ioctl];
  for (let size = QUERY_INITIAL_BYTES; ; ) {
    const buffer = Buffer.alloc(size);
    const returned: [number] = [0];
    if (ws.WSAIoctl(socket, code, null, 0, buffer, size, returned, null, null) === 0) {
      const length = returned[0];
      if (length > size) {
        throw ioctlError(ioctl, Win32Error.WSAEFAULT, `reported ${length} bytes in a buffer of ${size}`);
      }
      // A copy of just the returned bytes: the blob goes on verbatim, with no slack.
      return { ok: true, bytes: Buffer.from(buffer.subarray(0, length)) };
    }
    const error = ws.WSAGetLastError();
    const reported = returned[0];
    let next: number | undefined;
    if (TOO_SMALL.has(error)) next = reported > size ? reported : size * 2;
    else if (error === Win32Error.WSAEINVAL && reported === 0 && size < QUERY_MAX_BYTES) next = size * 2;
    if (next === undefined) return { ok: false, error };
    if (next > QUERY_MAX_BYTES) {
      const needs = reported > size ? `${reported} bytes` : `more than ${size} bytes`;
      throw ioctlError(ioctl, error, `the blob needs ${needs}, over the bound of ${QUERY_MAX_BYTES}`);
    }
    size = next;
  }
}

function ioctlError(ioctl: WfpIoctl, code: number, detail?: string): WfpIoctlError {
  return new WfpIoctlError(ioctl, code, win32ErrorName(code), detail);
}

/** Access denied as the context query may report it: Win32 (STATUS_ACCESS_DENIED) or Winsock. */
export function isAccessDenied(error: unknown): boolean {
  return (
    error instanceof WfpIoctlError &&
    (error.win32Error === Win32Error.ERROR_ACCESS_DENIED || error.win32Error === Win32Error.WSAEACCES)
  );
}
