// Wine lane (scripts/wine-lane.sh): the three WFP ioctls through koffi's win32-x64 build,
// against the PE stand-in (test-fixtures/wfp/ws2-stand-in-win.c), which answers them as the
// documentation says and forwards everything else to Wine's ws2_32.
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { ContextNotFoundError, WfpIoctlError } from '../../model/errors.js';
import { SizeStyle, type StandIn, installStandIn, uninstallStandIn } from '../../testing/wfp-stand-in.js';
import { assertWindowsBuild, eventHandle, newSocket, standInLibrary } from '../../testing/wine.js';
import { Win32Error, ioctlCode } from './ioctl-codes.js';
import { QUERY_INITIAL_BYTES, QUERY_MAX_BYTES, type RedirectIoctls, isAccessDenied, redirectIoctls } from './redirect-ioctls.js';
import type { SocketHandle, Winsock } from './winsock.js';

const RECORDS = ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS;
const SET = ioctlCode.SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS;

function blob(length: number, seed = 1): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

describe('the WFP redirect ioctls on the Windows builds of Node and koffi, against the PE stand-in', () => {
  let standIn: StandIn;
  let ws: Winsock;
  let ioctls: RedirectIoctls;
  const sockets: SocketHandle[] = [];
  const socket = (): SocketHandle => {
    const made = newSocket(ws);
    sockets.push(made);
    return made;
  };
  const outputLengths = (): number[] => standIn.ioctlLog().map((call) => call.outputLength);

  before(() => {
    assertWindowsBuild();
    ({ standIn, ws } = installStandIn(standInLibrary()));
    ioctls = redirectIoctls(ws);
  });
  after(() => uninstallStandIn(standIn));
  beforeEach(() => standIn.reset());
  afterEach(() => {
    for (const made of sockets.splice(0)) ws.closesocket(made);
  });

  it('returns exactly the bytes of a blob that fits the first buffer, in one call with no input buffer', () => {
    const s = socket();
    standIn.attach(s, 'records', blob(100));
    const records = ioctls.queryRecords(s);
    assert.ok(records !== undefined);
    assert.equal(records.length, 100);
    assert.ok(records.equals(blob(100)));
    assert.deepEqual(standIn.ioctlLog(), [{ code: RECORDS, inputLength: 0, outputLength: QUERY_INITIAL_BYTES }]);
  });

  for (const [name, style] of [
    ['WSAENOBUFS', SizeStyle.WSAENOBUFS],
    ['ERROR_INSUFFICIENT_BUFFER', SizeStyle.ERROR_INSUFFICIENT_BUFFER],
  ] as const) {
    it(`grows to exactly the size the call reports with ${name}`, () => {
      const s = socket();
      standIn.sizeStyle(style);
      standIn.attach(s, 'records', blob(10_000));
      assert.ok(ioctls.queryRecords(s)?.equals(blob(10_000)));
      assert.deepEqual(outputLengths(), [QUERY_INITIAL_BYTES, 10_000]);
    });
  }

  it('doubles the buffer on WSAEINVAL with a zero count, and returns only the returned bytes', () => {
    const s = socket();
    standIn.sizeStyle(SizeStyle.WSAEINVAL_ZERO);
    standIn.attach(s, 'context', blob(10_000, 2));
    assert.ok(ioctls.queryContext(s, 'acme-av').equals(blob(10_000, 2)));
    assert.deepEqual(outputLengths(), [4096, 8192, 16384]);
  });

  it('grows within a bound: a blob the size of the bound is read, a larger one is a typed error', () => {
    const fits = socket();
    standIn.attach(fits, 'records', blob(QUERY_MAX_BYTES));
    assert.equal(ioctls.queryRecords(fits)?.length, QUERY_MAX_BYTES);
    standIn.reset();
    const huge = socket();
    standIn.attach(huge, 'records', blob(QUERY_MAX_BYTES + 1));
    assert.throws(() => ioctls.queryRecords(huge), { code: 'COPROXY_WFP_IOCTL_FAILED', win32Error: Win32Error.WSAENOBUFS, win32ErrorName: 'WSAENOBUFS' });
    assert.deepEqual(outputLengths(), [QUERY_INITIAL_BYTES]);
  });

  it('returns blobs of many sizes byte for byte, whichever way the size is negotiated', () => {
    const s = socket();
    for (const length of [1, 4095, 4096, 4097, 8193, 40_000, QUERY_MAX_BYTES]) {
      for (const style of Object.values(SizeStyle)) {
        standIn.reset();
        standIn.sizeStyle(style);
        standIn.attach(s, 'records', blob(length, length + style));
        assert.ok(ioctls.queryRecords(s)?.equals(blob(length, length + style)), `${length} bytes, size style ${style}`);
      }
    }
  });

  it('reads no records where the connection carries none (not found, or found empty), and a missing context as COPROXY_CONTEXT_NOT_FOUND', () => {
    const none = socket();
    assert.equal(ioctls.queryRecords(none), undefined);
    assert.throws(() => ioctls.queryContext(none, 'acme-av'), ContextNotFoundError);
    const empty = socket();
    standIn.attach(empty, 'records', Buffer.alloc(0));
    standIn.attach(empty, 'context', Buffer.alloc(0));
    assert.equal(ioctls.queryRecords(empty), undefined);
    assert.throws(() => ioctls.queryContext(empty, 'acme-av'), { code: 'COPROXY_CONTEXT_NOT_FOUND', redirectorId: 'acme-av' });
  });

  for (const [ioctl, name, error, denied] of [
    ['context', 'ERROR_ACCESS_DENIED', Win32Error.ERROR_ACCESS_DENIED, true],
    ['context', 'WSAEACCES', Win32Error.WSAEACCES, true],
    ['context', 'ERROR_ARITHMETIC_OVERFLOW', Win32Error.ERROR_ARITHMETIC_OVERFLOW, false],
    ['records', 'WSAEACCES', Win32Error.WSAEACCES, true],
    ['records', 'WSAENETDOWN', Win32Error.WSAENETDOWN, false],
  ] as const) {
    it(`turns a ${ioctl} query failing with ${name} into a typed error carrying the code, asked once`, () => {
      const s = socket();
      standIn.attach(s, ioctl, blob(10));
      standIn.fail(s, ioctl, error);
      let thrown: unknown;
      try {
        if (ioctl === 'records') ioctls.queryRecords(s);
        else ioctls.queryContext(s, 'acme-av');
      } catch (caught) {
        thrown = caught;
      }
      assert.ok(thrown instanceof WfpIoctlError);
      assert.equal(thrown.win32Error, error);
      assert.equal(thrown.win32ErrorName, name);
      assert.equal(thrown.ioctl, ioctl === 'records' ? 'SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS' : 'SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT');
      assert.equal(isAccessDenied(thrown), denied);
      assert.equal(standIn.ioctlLog().length, 1);
    });
  }

  it("reports WSAENOTSOCK, Winsock's own verdict, for a closed SOCKET and a handle that is not a socket, for queries and SET alike", () => {
    const closed = newSocket(ws);
    ws.closesocket(closed);
    const event = eventHandle();
    try {
      const notSocket = { code: 'COPROXY_WFP_IOCTL_FAILED', win32Error: Win32Error.WSAENOTSOCK, win32ErrorName: 'WSAENOTSOCK' };
      for (const handle of [closed, event.handle]) {
        assert.throws(() => ioctls.queryRecords(handle), notSocket);
        assert.throws(() => ioctls.queryContext(handle, 'acme-av'), notSocket);
        assert.throws(() => ioctls.setRecords(handle, blob(8)), notSocket);
      }
    } finally {
      event.close();
    }
  });

  it('SETs the exact length; the OS keeps its own copy, which a later QUERY returns', () => {
    const s = socket();
    const records = blob(300, 9);
    ioctls.setRecords(s, records);
    records.fill(0); // the caller's buffer is the caller's again
    assert.ok(ioctls.queryRecords(s)?.equals(blob(300, 9)));
    assert.deepEqual(standIn.ioctlLog(), [
      { code: SET, inputLength: 300, outputLength: 0 },
      { code: RECORDS, inputLength: 0, outputLength: QUERY_INITIAL_BYTES },
    ]);
  });

  it('turns a refused SET into a typed error naming the SET ioctl', () => {
    const s = socket();
    standIn.fail(s, 'set', Win32Error.WSAEACCES);
    assert.throws(() => ioctls.setRecords(s, blob(16)), { ioctl: 'SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS', win32Error: Win32Error.WSAEACCES });
    assert.throws(() => ioctls.setRecords(socket(), Buffer.alloc(0)), { win32Error: Win32Error.WSAEINVAL });
  });

  it("forwards any other ioctl to Wine's ws2_32, which knows FIONREAD and not a made-up code", () => {
    const s = socket();
    const returned: [number] = [0];
    assert.equal(ws.WSAIoctl(s, ioctlCode.SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT + 0x10, null, 0, Buffer.alloc(4), 4, returned, null, null), -1);
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAEOPNOTSUPP);
    const FIONREAD = 0x4004667f;
    const count = Buffer.alloc(4, 0xff);
    assert.equal(ws.WSAIoctl(s, FIONREAD, null, 0, count, 4, returned, null, null), 0);
    assert.equal(count.readUInt32LE(0), 0);
    assert.deepEqual(standIn.ioctlLog(), []);
  });
});
