// Wine lane (scripts/wine-lane.sh): core's Winsock declarations on the Windows builds of
// Node and koffi, against Wine's own ws2_32.dll; no stand-in. Wine implements none of the
// three WFP ioctls, as Windows without a callout driver reports nothing to them either.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WfpIoctlError } from '../../model/errors.js';
import { createRedirector } from '../../redirector/redirector.js';
import type { RedirectorEvent } from '../../redirector/redirector-events.js';
import { assertServesNothingAfterClose, assertWindowsBuild, eventHandle, localPort, newSocket, winsockListener } from '../../testing/wine.js';
import { Win32Error, Ws, ioctlCode } from './ioctl-codes.js';
import { redirectIoctls } from './redirect-ioctls.js';
import { SOCKADDR_BYTES, decodeSockaddr } from './sockaddr.js';
import { type SocketHandle, type Winsock, handleValue, winsock, winsockLibraryOverride, wsaPollFd } from './winsock.js';

describe("the Winsock declarations, on koffi's win32-x64 build against Wine's ws2_32.dll", () => {
  let ws: Winsock;
  const sockets: SocketHandle[] = [];
  const socket = (family?: number): SocketHandle => {
    const made = newSocket(ws, family);
    sockets.push(made);
    return made;
  };

  before(() => {
    assertWindowsBuild();
    assert.equal(winsockLibraryOverride(), undefined);
    ws = winsock();
    assert.equal(ws.library, 'ws2_32.dll');
  });
  after(() => {
    for (const made of sockets.splice(0)) ws.closesocket(made);
  });

  it('turns each of the three ioctls failing with WSAEOPNOTSUPP into the documented typed error', () => {
    const ioctls = redirectIoctls(ws);
    const s = socket();
    const expected = (ioctl: string) => ({
      name: 'WfpIoctlError',
      code: 'COPROXY_WFP_IOCTL_FAILED',
      ioctl,
      win32Error: Win32Error.WSAEOPNOTSUPP,
      win32ErrorName: 'WSAEOPNOTSUPP',
    });
    assert.throws(() => ioctls.queryRecords(s), expected('SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS'));
    assert.throws(() => ioctls.queryContext(s, 'acme-av'), expected('SIO_QUERY_WFP_CONNECTION_REDIRECT_CONTEXT'));
    assert.throws(() => ioctls.setRecords(s, Buffer.from('opaque')), expected('SIO_SET_WFP_CONNECTION_REDIRECT_RECORDS'));
    assert.throws(() => ioctls.queryRecords(s), WfpIoctlError);
  });

  it('passes all nine WSAIoctl arguments (five of them on the stack in the Win64 convention) and reads back SOCKET_ERROR', () => {
    const s = socket();
    const returned: [number] = [0x5eed];
    const output = Buffer.alloc(64, 0xaa);
    for (const code of Object.values(ioctlCode)) {
      assert.equal(ws.WSAIoctl(s, code, null, 0, output, output.length, returned, null, null), -1);
      assert.equal(ws.WSAGetLastError(), Win32Error.WSAEOPNOTSUPP);
    }
    assert.ok(output.every((byte) => byte === 0xaa), 'a refused ioctl writes nothing');
  });

  it("keeps Winsock's last error across JavaScript and Node's own I/O between two koffi calls", async () => {
    const closed = newSocket(ws);
    assert.equal(ws.closesocket(closed), 0);
    const name = Buffer.alloc(SOCKADDR_BYTES);
    assert.equal(ws.getsockname(closed, name, [SOCKADDR_BYTES]), -1);
    // Node's file and socket calls on this thread set and clear the thread's last error.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-wine-'));
    fs.writeFileSync(path.join(dir, 'f'), 'x');
    assert.throws(() => fs.readFileSync(path.join(dir, 'missing')));
    fs.rmSync(dir, { recursive: true });
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK);
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK);
  });

  it('reports WSAENOTSOCK for a closed SOCKET and for a live handle that is not a socket', () => {
    const event = eventHandle();
    try {
      const closed = newSocket(ws);
      ws.closesocket(closed);
      for (const handle of [closed, event.handle]) {
        assert.equal(ws.getpeername(handle, Buffer.alloc(SOCKADDR_BYTES), [SOCKADDR_BYTES]), -1);
        assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK);
        assert.equal(ws.listen(handle, 1), -1);
        assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK);
      }
      // Wine's WSAIoctl answers an ioctl code it does not implement before it looks at the
      // handle; Windows' ws2_32 looks the socket up first (WSAENOTSOCK). Either way a typed error.
      assert.throws(() => redirectIoctls(ws).queryRecords(closed), { code: 'COPROXY_WFP_IOCTL_FAILED', win32Error: Win32Error.WSAEOPNOTSUPP });
    } finally {
      event.close();
    }
  });

  it('returns SOCKET as a 64-bit value: INVALID_SOCKET is all bits set, and handleValue refuses it', () => {
    const invalid = ws.WSASocketW(9999, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED);
    assert.equal(BigInt(invalid), 2n ** 64n - 1n);
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAEAFNOSUPPORT);
    assert.equal(handleValue(invalid), undefined);
    const valid = ws.WSASocketW(Ws.AF_INET6, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED);
    assert.equal(typeof valid, 'number');
    sockets.push(handleValue(valid)!);
  });

  it('fills an address buffer and its in/out length, and refuses one too small with WSAEFAULT', () => {
    const listener = winsockListener(ws);
    sockets.push(listener.socket);
    const name = Buffer.alloc(SOCKADDR_BYTES, 0xee);
    const length: [number] = [SOCKADDR_BYTES];
    assert.equal(ws.getsockname(listener.socket, name, length), 0);
    assert.equal(length[0], 16);
    assert.deepEqual(decodeSockaddr(name, length[0]), { address: '127.0.0.1', port: listener.port, family: 4 });
    assert.ok(name.subarray(16).every((byte) => byte === 0xee), 'nothing written past the returned length');

    const short: [number] = [8];
    assert.equal(ws.getsockname(listener.socket, Buffer.alloc(8), short), -1);
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAEFAULT);

    const v6 = socket(Ws.AF_INET6);
    const any6 = Buffer.alloc(28);
    any6.writeUInt16LE(Ws.AF_INET6, 0);
    any6[23] = 1; // ::1
    assert.equal(ws.bind(v6, any6, any6.length), 0);
    const six = Buffer.alloc(SOCKADDR_BYTES);
    const sixLength: [number] = [SOCKADDR_BYTES];
    assert.equal(ws.getsockname(v6, six, sixLength), 0);
    assert.equal(sixLength[0], 28);
    assert.deepEqual(decodeSockaddr(six, sixLength[0])?.address, '::1');
  });

  it('waits with WSAPoll on a worker thread, on a WSAPOLLFD laid out for Win64', async () => {
    const listener = winsockListener(ws);
    sockets.push(listener.socket);
    const fds = wsaPollFd(listener.socket, Ws.POLLRDNORM);
    const poll = (buffer: Buffer, timeoutMs: number): Promise<number> =>
      new Promise((resolve, reject) =>
        ws.pollAsync(buffer, 1, timeoutMs, (error, ready) => (error instanceof Error ? reject(error) : resolve(ready))),
      );
    assert.equal(fds.length, 16);
    const idle = await poll(fds, 50);
    assert.equal(idle, 0);
    const client = net.connect({ host: '127.0.0.1', port: listener.port });
    await once(client, 'connect');
    const ready = await poll(fds, 2000);
    assert.equal(ready, 1);
    assert.equal(fds.readInt16LE(10) & Ws.POLLRDNORM, Ws.POLLRDNORM); // revents, after the 8-byte SOCKET and events
    client.destroy();
  });

  it('sets SO_EXCLUSIVEADDRUSE: a second listener on the port is refused', () => {
    const first = socket();
    const one = Buffer.alloc(4);
    one.writeInt32LE(1, 0);
    assert.equal(ws.setsockopt(first, Ws.SOL_SOCKET, Ws.SO_EXCLUSIVEADDRUSE, one, 4), 0);
    const name = Buffer.alloc(16);
    name.writeUInt16LE(Ws.AF_INET, 0);
    name.writeUInt32BE(0x7f000001, 4);
    assert.equal(ws.bind(first, name, 16), 0);
    assert.equal(ws.listen(first, 4), 0);
    const taken = Buffer.alloc(16);
    name.copy(taken);
    taken.writeUInt16BE(localPort(ws, first), 2);
    const second = socket();
    assert.equal(ws.bind(second, taken, 16), -1);
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAEADDRINUSE);
  });
});

describe("the WFP backend on Wine's ws2_32, where no callout redirects anything", () => {
  before(assertWindowsBuild);

  it('listens through Winsock, rejects each connection with the typed WSAEOPNOTSUPP error, keeps serving, and stops on unsubscribe', async () => {
    const redirector = createRedirector({ id: 'acme-av', priority: 10, backend: 'wfp' });
    const events: RedirectorEvent[] = [];
    redirector.events$.subscribe((event) => events.push(event));
    let accepted = 0;
    const subscription = redirector.accepted$.subscribe(() => accepted++);
    const { address, port } = await redirector.installed();
    assert.equal(address, '127.0.0.1');

    for (let i = 0; i < 3; i++) {
      const client = net.connect({ host: '127.0.0.1', port });
      client.on('error', () => undefined); // a reset is as good as a close here
      client.resume();
      await new Promise((resolve) => client.once('close', resolve)); // once() would reject on the reset
    }
    const rejected = events.filter((event) => event.type === 'rejected');
    assert.equal(rejected.length, 3);
    for (const event of rejected) {
      assert.equal(event.type, 'rejected');
      assert.ok(event.error instanceof WfpIoctlError);
      assert.equal(event.error.code, 'COPROXY_WFP_IOCTL_FAILED');
      assert.equal(event.error.ioctl, 'SIO_QUERY_WFP_CONNECTION_REDIRECT_RECORDS');
      assert.equal(event.error.win32ErrorName, 'WSAEOPNOTSUPP');
      assert.equal(event.remote?.address, '127.0.0.1');
    }
    assert.equal(accepted, 0);

    const seenBefore = events.length;
    subscription.unsubscribe();
    await assertServesNothingAfterClose(port);
    // Once the listener is closed nothing reaches the redirector: no flow, no event.
    assert.equal(accepted, 0);
    assert.deepEqual(events.slice(seenBefore).map((event) => event.type), ['uninstalled']);
    await redirector[Symbol.asyncDispose]();
  });
});
