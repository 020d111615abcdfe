// Wine lane (scripts/wine-lane.sh): socket adoption on the Windows build of Node: SOCKETs
// made and accepted by Wine's ws2_32 through koffi, handed to libuv's IOCP loop with
// uv_tcp_open, then ordinary net.Sockets.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { afterEach, before, describe, it } from 'node:test';
import { assertWindowsBuild, eventHandle, localPort, newSocket, readAll, winsockListener } from '../../testing/wine.js';
import { adoptSocket } from './adopt-socket.js';
import { Win32Error } from './ioctl-codes.js';
import { encodeSockaddr } from './sockaddr.js';
import { type SocketHandle, type Winsock, winsock } from './winsock.js';

const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

describe("adopting Winsock's sockets into Node's libuv/IOCP loop (Windows build of Node, Wine's ws2_32)", () => {
  let ws: Winsock;
  const raw: SocketHandle[] = [];
  const servers: net.Server[] = [];
  /** Whether the SOCKET is still open, connected: Winsock knows its peer. */
  const connected = (socket: SocketHandle): boolean => ws.getpeername(socket, Buffer.alloc(28), [28]) === 0;
  const server = async (onConnection: (socket: net.Socket) => void): Promise<number> => {
    const s = net.createServer({ allowHalfOpen: true }, onConnection);
    servers.push(s);
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    return (s.address() as net.AddressInfo).port;
  };
  /** A client of Node's and the Winsock-accepted socket on the other end, adopted. */
  const acceptedPair = async (): Promise<{ client: net.Socket; adopted: net.Socket; socket: SocketHandle }> => {
    const listener = winsockListener(ws);
    raw.push(listener.socket);
    const client = net.connect({ host: '127.0.0.1', port: listener.port, allowHalfOpen: true });
    await once(client, 'connect');
    const socket = await listener.accept();
    const adopted = adoptSocket(socket, { connected: true, allowHalfOpen: true });
    return { client, adopted, socket };
  };

  before(() => {
    assertWindowsBuild();
    ws = winsock();
  });
  afterEach(() => {
    for (const socket of raw.splice(0)) ws.closesocket(socket);
    for (const s of servers.splice(0)) s.close();
  });

  it('makes an accepted SOCKET an ordinary net.Socket: addresses, bytes both ways, half-close each way, then close releases the SOCKET', async () => {
    const { client, adopted, socket } = await acceptedPair();
    assert.ok(adopted instanceof net.Socket);
    assert.equal(adopted.remotePort, client.localPort);
    assert.equal(adopted.localPort, client.remotePort);
    assert.equal(adopted.remoteAddress, '127.0.0.1');

    const toServer = randomBytes(3 * 1024 * 1024);
    const toClient = randomBytes(2 * 1024 * 1024 + 17);
    const closed = once(adopted, 'close');
    const atServer = readAll(adopted);
    const atClient = readAll(client);
    client.end(toServer); // half-close: the server's reply must still flow after it
    assert.equal(sha256(await atServer), sha256(toServer));
    assert.ok(connected(socket));
    adopted.end(toClient);
    assert.equal(sha256(await atClient), sha256(toClient));
    await closed;
    assert.ok(!connected(socket));
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK); // Node closed the SOCKET
    client.destroy();
  });

  it('half-closes from the adopted side first, and the peer still writes back', async () => {
    const { client, adopted } = await acceptedPair();
    const atClient = readAll(client);
    const atServer = readAll(adopted);
    adopted.end('server done');
    assert.equal((await atClient).toString(), 'server done');
    client.end('client after');
    assert.equal((await atServer).toString(), 'client after');
    await once(adopted, 'close');
  });

  it('reports a reset both ways as net does: ECONNRESET on the adopted socket and on its peer', async () => {
    const first = await acceptedPair();
    first.adopted.resume();
    first.client.resetAndDestroy();
    const [error] = (await once(first.adopted, 'error')) as [NodeJS.ErrnoException];
    assert.equal(error.code, 'ECONNRESET');
    await once(first.adopted, 'close');

    const second = await acceptedPair();
    second.client.resume();
    second.adopted.resetAndDestroy();
    const [peerError] = (await once(second.client, 'error')) as [NodeJS.ErrnoException];
    assert.equal(peerError.code, 'ECONNRESET');
  });

  it('destroys an adopted socket: the peer sees the end, and the SOCKET is closed', async () => {
    const { client, adopted, socket } = await acceptedPair();
    const atClient = readAll(client);
    adopted.write('last words');
    adopted.destroySoon();
    assert.equal((await atClient).toString(), 'last words');
    await once(adopted, 'close');
    assert.ok(!connected(socket));
    assert.equal(ws.WSAGetLastError(), Win32Error.WSAENOTSOCK);
    client.destroy();
  });

  it('connects a new SOCKET after adoption (libuv\'s ConnectEx), keeping the port it was bound to', async () => {
    let serverSide: net.Socket | undefined;
    const port = await server((s) => {
      serverSide = s;
      void readAll(s).then((got) => s.end(`echo:${got.toString()}`));
    });
    const fresh = newSocket(ws);
    const name = encodeSockaddr('127.0.0.1', 0);
    assert.equal(ws.bind(fresh, name, name.length), 0);
    const bound = localPort(ws, fresh);
    const socket = adoptSocket(fresh, { connected: false, allowHalfOpen: true });
    socket.connect({ host: '127.0.0.1', port });
    await once(socket, 'connect');
    assert.equal(socket.localPort, bound);
    assert.equal(serverSide?.remotePort, bound);
    const reply = readAll(socket);
    socket.end('hello');
    assert.equal((await reply).toString(), 'echo:hello');
    await once(socket, 'close');
  });

  it('connects an unbound new SOCKET (libuv binds it first), and reports a refused connection as net does', async () => {
    const port = await server((s) => s.end('hi'));
    const unbound = adoptSocket(newSocket(ws), { connected: false, allowHalfOpen: false });
    unbound.connect({ host: '127.0.0.1', port });
    assert.equal((await readAll(unbound)).toString(), 'hi');

    const gone = await server(() => undefined);
    await new Promise<void>((resolve) => servers.pop()!.close(() => resolve()));
    const refused = adoptSocket(newSocket(ws), { connected: false, allowHalfOpen: true });
    refused.connect({ host: '127.0.0.1', port: gone });
    const [error] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    assert.equal(error.code, 'ECONNREFUSED');
  });

  it('refuses a SOCKET Node already owns with EEXIST, as libuv does on Linux, and adopts its value again once closed', async () => {
    // libuv on Windows would take it a second time (the IOCP association fails, and an
    // imported socket then falls back to emulated IOCP): two owners of one SOCKET.
    const { client, adopted, socket } = await acceptedPair();
    assert.throws(() => adoptSocket(socket, { connected: true, allowHalfOpen: true }), {
      code: 'COPROXY_SYSCALL_FAILED',
      syscall: 'uv_tcp_open',
      errnoName: 'EEXIST',
    });
    const atClient = readAll(client);
    adopted.end('still one owner');
    assert.equal((await atClient).toString(), 'still one owner');
    client.end();
    await once(adopted, 'close');
    // The value is free again: a new socket may get it, and must be adoptable.
    const next = await acceptedPair();
    next.adopted.destroy();
    next.client.destroy();
  });

  it('refuses a closed SOCKET and a handle that is not a socket with a typed error, and takes nothing', () => {
    const closed = newSocket(ws);
    ws.closesocket(closed);
    assert.throws(() => adoptSocket(closed, { connected: true, allowHalfOpen: true }), {
      code: 'COPROXY_SYSCALL_FAILED',
      syscall: 'uv_tcp_open',
      errnoName: 'ENOTSOCK',
    });
    const event = eventHandle();
    try {
      assert.throws(() => adoptSocket(event.handle, { connected: false, allowHalfOpen: true }), {
        code: 'COPROXY_SYSCALL_FAILED',
        syscall: 'uv_tcp_open',
        errnoName: 'ENOTSOCK',
      });
    } finally {
      event.close();
    }
    assert.throws(() => adoptSocket(-1, { connected: false, allowHalfOpen: true }), { code: 'COPROXY_INVALID_OPTIONS', option: 'socket' });
  });
});
