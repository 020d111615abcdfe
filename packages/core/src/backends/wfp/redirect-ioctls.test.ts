import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ContextNotFoundError, WfpIoctlError } from '../../model/errors.js';
import { SizeStyle, type StandIn, installStandIn, uninstallStandIn } from '../../testing/wfp-stand-in.js';
import { Win32Error, Ws, ioctlCode } from './ioctl-codes.js';
import { QUERY_INITIAL_BYTES, QUERY_MAX_BYTES, type RedirectIoctls, isAccessDenied, redirectIoctls } from './redirect-ioctls.js';
import { type SocketHandle, type Winsock, handleValue } from './winsock.js';

const RECORDS = ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
const CONTEXT = ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT;
const SET = ioctlCode.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;

function blob(length: number, seed = 1): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

describe('the WFP redirect ioctls, through koffi against a Winsock stand-in', () => {
  let standIn: StandIn;
  let ws: Winsock;
  let ioctls: RedirectIoctls;
  const sockets: SocketHandle[] = [];

  const newSocket = (): SocketHandle => {
    const socket = handleValue(ws.WSASocketW(Ws.AF_INET, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED));
    if (socket === undefined) throw new Error(`WSASocketW failed: ${ws.WSAGetLastError()}`);
    sockets.push(socket);
    return socket;
  };
  const outputLengths = (): number[] => standIn.ioctlLog().map((call) => call.outputLength);

  beforeAll(() => {
    ({ standIn, ws } = installStandIn());
    ioctls = redirectIoctls(ws);
  });
  afterAll(() => uninstallStandIn(standIn));
  beforeEach(() => standIn.reset());
  afterEach(() => {
    for (const socket of sockets.splice(0)) ws.closesocket(socket);
  });

  it('returns exactly the bytes of a blob that fits the first buffer, in one call with no input buffer', () => {
    const socket = newSocket();
    standIn.attach(socket, 'records', blob(100));
    const records = ioctls.queryRecords(socket);
    expect(records).toEqual(blob(100));
    expect(records?.length).toBe(100);
    expect(standIn.ioctlLog()).toEqual([{ code: RECORDS, inputLength: 0, outputLength: QUERY_INITIAL_BYTES }]);
  });

  it.each([
    ['WSAENOBUFS', SizeStyle.WSAENOBUFS],
    ['ERROR_INSUFFICIENT_BUFFER', SizeStyle.ERROR_INSUFFICIENT_BUFFER],
  ])('grows to exactly the size the call reports with %s', (_name, style) => {
    const socket = newSocket();
    standIn.sizeStyle(style);
    standIn.attach(socket, 'records', blob(10_000));
    expect(ioctls.queryRecords(socket)).toEqual(blob(10_000));
    expect(outputLengths()).toEqual([QUERY_INITIAL_BYTES, 10_000]);
  });

  it('doubles the buffer on WSAEINVAL with a zero count, as the SDK page describes, and returns only the returned bytes', () => {
    const socket = newSocket();
    standIn.sizeStyle(SizeStyle.WSAEINVAL_ZERO);
    standIn.attach(socket, 'context', blob(10_000, 2));
    const context = ioctls.queryContext(socket, 'acme-av');
    expect(context).toEqual(blob(10_000, 2));
    expect(outputLengths()).toEqual([4096, 8192, 16384]);
  });

  it('grows within a bound: a blob the size of the bound is read, a larger one is a typed error', () => {
    const fits = newSocket();
    standIn.attach(fits, 'records', blob(QUERY_MAX_BYTES));
    expect(ioctls.queryRecords(fits)?.length).toBe(QUERY_MAX_BYTES);

    standIn.reset();
    const huge = newSocket();
    standIn.attach(huge, 'records', blob(QUERY_MAX_BYTES + 1));
    expect(() => ioctls.queryRecords(huge)).toThrow(
      expect.objectContaining({ code: 'COPROXY_WFP_IOCTL_FAILED', win32Error: Win32Error.WSAENOBUFS, win32ErrorName: 'WSAENOBUFS' }),
    );
    expect(outputLengths()).toEqual([QUERY_INITIAL_BYTES]); // the oversized request is never made

    standIn.reset();
    standIn.sizeStyle(SizeStyle.WSAEINVAL_ZERO);
    standIn.attach(huge, 'records', blob(QUERY_MAX_BYTES + 1));
    expect(() => ioctls.queryRecords(huge)).toThrow(expect.objectContaining({ win32Error: Win32Error.WSAEINVAL }));
    expect(outputLengths()).toEqual([4096, 8192, 16384, 32768, 65536]);
  });

  it('returns any blob byte for byte, whichever way the size is negotiated', () => {
    const socket = newSocket();
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: QUERY_MAX_BYTES }),
        fc.constantFrom(SizeStyle.WSAENOBUFS, SizeStyle.ERROR_INSUFFICIENT_BUFFER, SizeStyle.WSAEINVAL_ZERO),
        fc.integer({ min: 0, max: 255 }),
        (length, style, seed) => {
          standIn.reset();
          standIn.sizeStyle(style);
          standIn.attach(socket, 'records', blob(length, seed));
          // Buffer#equals: vitest's deep equality is slow on 64 KiB buffers.
          expect(ioctls.queryRecords(socket)?.equals(blob(length, seed))).toBe(true);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('reads no records where the connection carries none: not found, or found empty', () => {
    const none = newSocket();
    expect(ioctls.queryRecords(none)).toBeUndefined();
    const empty = newSocket();
    standIn.attach(empty, 'records', Buffer.alloc(0));
    expect(ioctls.queryRecords(empty)).toBeUndefined();
  });

  it('reports a missing context as COPROXY_CONTEXT_NOT_FOUND: not found, or success with zero bytes', () => {
    const none = newSocket();
    expect(() => ioctls.queryContext(none, 'acme-av')).toThrow(ContextNotFoundError);
    expect(() => ioctls.queryContext(none, 'acme-av')).toThrow(expect.objectContaining({ code: 'COPROXY_CONTEXT_NOT_FOUND', redirectorId: 'acme-av' }));
    const empty = newSocket();
    standIn.attach(empty, 'context', Buffer.alloc(0));
    expect(() => ioctls.queryContext(empty, 'acme-av')).toThrow(ContextNotFoundError);
  });

  it.each([
    ['context', 'ERROR_ACCESS_DENIED', Win32Error.ERROR_ACCESS_DENIED, true],
    ['context', 'WSAEACCES', Win32Error.WSAEACCES, true],
    ['context', 'ERROR_ARITHMETIC_OVERFLOW', Win32Error.ERROR_ARITHMETIC_OVERFLOW, false],
    ['records', 'WSAEACCES', Win32Error.WSAEACCES, true],
    ['records', 'ERROR_ARITHMETIC_OVERFLOW', Win32Error.ERROR_ARITHMETIC_OVERFLOW, false],
    ['records', 'WSAEOPNOTSUPP', Win32Error.WSAEOPNOTSUPP, false],
    ['records', 'WSAENETDOWN', Win32Error.WSAENETDOWN, false],
  ] as const)('turns a %s query failing with %s into a typed error carrying the code', (ioctl, name, error, denied) => {
    const socket = newSocket();
    standIn.attach(socket, ioctl, blob(10)); // there is something, but the call is refused
    standIn.fail(socket, ioctl, error);
    let thrown: unknown;
    try {
      if (ioctl === 'records') ioctls.queryRecords(socket);
      else ioctls.queryContext(socket, 'acme-av');
    } catch (caught) {
      thrown = caught;
    }
    expect(thrown).toBeInstanceOf(WfpIoctlError);
    expect(thrown).toMatchObject({
      name: 'WfpIoctlError',
      code: 'COPROXY_WFP_IOCTL_FAILED',
      ioctl: ioctl === 'records' ? 'SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS' : 'SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT',
      win32Error: error,
      win32ErrorName: name,
    });
    expect(isAccessDenied(thrown)).toBe(denied);
    expect(standIn.ioctlLog()).toHaveLength(1); // not a size problem: asked once
  });

  it('reports a handle that is not a socket as WSAENOTSOCK, for queries and SET alike', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-notsock-'));
    const file = fs.openSync(path.join(dir, 'plain'), 'w');
    try {
      const notSocket: unknown = expect.objectContaining({ win32Error: Win32Error.WSAENOTSOCK, win32ErrorName: 'WSAENOTSOCK' });
      expect(() => ioctls.queryRecords(file)).toThrow(notSocket);
      expect(() => ioctls.queryContext(file, 'acme-av')).toThrow(notSocket);
      expect(() => ioctls.setRecords(file, blob(8))).toThrow(notSocket);
      const closed = newSocket();
      ws.closesocket(closed);
      sockets.pop();
      expect(() => ioctls.queryRecords(closed)).toThrow(notSocket);
    } finally {
      fs.closeSync(file);
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('SETs the exact length; the OS keeps its own copy, which a later QUERY returns', () => {
    const socket = newSocket();
    const records = blob(300, 9);
    ioctls.setRecords(socket, records);
    records.fill(0); // the caller's buffer is the caller's again
    expect(ioctls.queryRecords(socket)).toEqual(blob(300, 9));
    expect(standIn.ioctlLog()[0]).toEqual({ code: SET, inputLength: 300, outputLength: 0 });
    expect(standIn.ioctlLog()[1]).toEqual({ code: RECORDS, inputLength: 0, outputLength: QUERY_INITIAL_BYTES });
  });

  it('turns a refused SET into a typed error naming the SET ioctl', () => {
    const socket = newSocket();
    standIn.fail(socket, 'set', Win32Error.WSAEACCES);
    expect(() => ioctls.setRecords(socket, blob(16))).toThrow(
      expect.objectContaining({ ioctl: 'SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS', win32Error: Win32Error.WSAEACCES }),
    );
    expect(() => ioctls.setRecords(newSocket(), Buffer.alloc(0))).toThrow(expect.objectContaining({ win32Error: Win32Error.WSAEINVAL }));
  });

  it('an ioctl the provider does not know is WSAEOPNOTSUPP', () => {
    const returned: [number] = [0];
    expect(ws.WSAIoctl(newSocket(), CONTEXT + 0x10, null, 0, Buffer.alloc(4), 4, returned, null, null)).toBe(-1);
    expect(ws.WSAGetLastError()).toBe(Win32Error.WSAEOPNOTSUPP);
  });
});
