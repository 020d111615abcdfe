import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type StandIn, installStandIn, uninstallStandIn } from '../../testing/wfp-stand-in.js';
import { adoptSocket } from './adopt-socket.js';
import { Win32Error, Ws } from './ioctl-codes.js';
import { SOCKADDR_BYTES, decodeSockaddr, encodeSockaddr } from './sockaddr.js';
import { type SocketHandle, type Winsock, handleValue } from './winsock.js';

/** Everything a socket sends until it ends. */
async function readAll(socket: net.Socket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await once(socket, 'end');
  return Buffer.concat(chunks).toString();
}

describe('adopting a socket made outside Node (koffi + Winsock stand-in, real Linux sockets)', () => {
  let standIn: StandIn;
  let ws: Winsock;
  const raw: SocketHandle[] = [];
  const servers: net.Server[] = [];

  const newSocket = (): SocketHandle => {
    const socket = handleValue(ws.WSASocketW(Ws.AF_INET, Ws.SOCK_STREAM, Ws.IPPROTO_TCP, null, 0, Ws.WSA_FLAG_OVERLAPPED));
    if (socket === undefined) throw new Error(`WSASocketW: ${ws.WSAGetLastError()}`);
    raw.push(socket);
    return socket;
  };
  const owned = (socket: SocketHandle): void => void raw.splice(raw.indexOf(socket), 1);
  const localPort = (socket: SocketHandle): number => {
    const name = Buffer.alloc(SOCKADDR_BYTES);
    const length: [number] = [SOCKADDR_BYTES];
    expect(ws.getsockname(socket, name, length)).toBe(0);
    return decodeSockaddr(name, length[0])!.port;
  };
  const server = async (onConnection: (socket: net.Socket) => void): Promise<number> => {
    const s = net.createServer({ allowHalfOpen: true }, onConnection);
    servers.push(s);
    await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
    return (s.address() as net.AddressInfo).port;
  };
  /** A Winsock listener, and the next connection it accepts (non-blocking accept, retried). */
  const winsockListener = (): { port: number; accept(): Promise<SocketHandle> } => {
    const listener = newSocket();
    const name = encodeSockaddr('127.0.0.1', 0);
    expect(ws.bind(listener, name, name.length)).toBe(0);
    expect(ws.listen(listener, 16)).toBe(0);
    expect(ws.ioctlsocket(listener, Ws.FIONBIO, [1])).toBe(0);
    return {
      port: localPort(listener),
      accept: async () => {
        for (let attempt = 0; attempt < 200; attempt++) {
          const socket = handleValue(ws.accept(listener, null, null));
          if (socket !== undefined) return (raw.push(socket), socket);
          expect(ws.WSAGetLastError()).toBe(Win32Error.WSAEWOULDBLOCK);
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        throw new Error('nothing to accept');
      },
    };
  };

  beforeAll(() => ({ standIn, ws } = installStandIn()));
  afterAll(() => uninstallStandIn(standIn));
  afterEach(() => {
    for (const socket of raw.splice(0)) ws.closesocket(socket);
    for (const s of servers.splice(0)) s.close();
  });

  it('makes an accepted socket an ordinary net.Socket: bytes both ways, half-close, then close releases the socket', async () => {
    const listener = winsockListener();
    const client = net.connect({ host: '127.0.0.1', port: listener.port, allowHalfOpen: true });
    await once(client, 'connect');
    const accepted = await listener.accept();
    const socket = adoptSocket(accepted, { connected: true, allowHalfOpen: true });
    owned(accepted);
    expect(socket).toBeInstanceOf(net.Socket);
    expect(socket.remotePort).toBe(client.localPort);
    expect(socket.localPort).toBe(listener.port);

    const closed = once(socket, 'close');
    const fromClient = readAll(socket);
    const fromServer = readAll(client);
    client.end('ping'); // half-close: the reply must still flow
    expect(await fromClient).toBe('ping');
    socket.end('pong');
    expect(await fromServer).toBe('pong');
    await closed;
    expect(() => fs.fstatSync(accepted)).toThrow(expect.objectContaining({ code: 'EBADF' })); // Node closed it
    client.destroy();
  });

  it('connects a new socket after adoption, keeping the port it was bound to, and carries bytes both ways', async () => {
    let serverSide: net.Socket | undefined;
    const port = await server((s) => {
      serverSide = s;
      s.on('data', (chunk: Buffer) => s.end(`echo:${chunk.toString()}`));
    });
    const fresh = newSocket();
    const name = encodeSockaddr('127.0.0.1', 0);
    expect(ws.bind(fresh, name, name.length)).toBe(0);
    const bound = localPort(fresh);
    const socket = adoptSocket(fresh, { connected: false, allowHalfOpen: false });
    owned(fresh);
    socket.connect({ host: '127.0.0.1', port });
    await once(socket, 'connect');
    expect(socket.localPort).toBe(bound);
    expect(serverSide?.remotePort).toBe(bound);
    const closed = once(socket, 'close');
    const reply = readAll(socket);
    socket.write('hello');
    expect(await reply).toBe('echo:hello');
    await closed;
  });

  it('reports a refused connection and a peer reset as net does', async () => {
    const closed = await server(() => undefined);
    await new Promise<void>((resolve) => servers.pop()!.close(() => resolve()));
    const refused = adoptSocket(owned0(newSocket()), { connected: false, allowHalfOpen: true });
    refused.connect({ host: '127.0.0.1', port: closed });
    const [refusal] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    expect(refusal.code).toBe('ECONNREFUSED');

    const port = await server((s) => s.resetAndDestroy());
    const reset = adoptSocket(owned0(newSocket()), { connected: false, allowHalfOpen: true });
    reset.connect({ host: '127.0.0.1', port });
    reset.resume();
    const [error] = (await once(reset, 'error')) as [NodeJS.ErrnoException];
    expect(error.code).toBe('ECONNRESET');
  });
  const owned0 = (socket: SocketHandle): SocketHandle => (owned(socket), socket);

  it('refuses what it cannot adopt with a typed error, and takes nothing', async () => {
    expect(() => adoptSocket(-1, { connected: false, allowHalfOpen: true })).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'socket' }));
    expect(() => adoptSocket(2 ** 31, { connected: false, allowHalfOpen: true })).toThrow(expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS' }));

    const closed = newSocket();
    ws.closesocket(closed);
    owned(closed);
    expect(() => adoptSocket(closed, { connected: false, allowHalfOpen: true })).toThrow(
      expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED', errnoName: 'EBADF' }),
    );

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-adopt-'));
    const file = fs.openSync(path.join(dir, 'plain'), 'w');
    try {
      expect(() => adoptSocket(file, { connected: false, allowHalfOpen: true })).toThrow(
        expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED', syscall: 'uv_tcp_open', errnoName: 'ENOTSOCK' }),
      );
      expect(fs.fstatSync(file).isFile()).toBe(true); // still the caller's, still open
    } finally {
      fs.closeSync(file);
      fs.rmSync(dir, { recursive: true });
    }

    // A socket Node already reads from: libuv refuses a second owner (EEXIST).
    const listener = winsockListener();
    const client = net.connect({ host: '127.0.0.1', port: listener.port });
    await once(client, 'connect');
    const accepted = await listener.accept();
    const first = adoptSocket(accepted, { connected: true, allowHalfOpen: true });
    owned(accepted);
    expect(() => adoptSocket(accepted, { connected: true, allowHalfOpen: true })).toThrow(
      expect.objectContaining({ code: 'COPROXY_SYSCALL_FAILED', errnoName: 'EEXIST' }),
    );
    client.end('still fine');
    expect(await readAll(first)).toBe('still fine');
    first.destroy();
  });

  it('adopts a socket whose number an adopted socket had, the moment Node closed that one (before its close event)', async () => {
    for (const end of ['destroy', 'resetAndDestroy'] as const) {
      const listener = winsockListener();
      const client = net.connect({ host: '127.0.0.1', port: listener.port });
      client.on('error', () => undefined);
      await once(client, 'connect');
      const accepted = await listener.accept();
      const first = adoptSocket(accepted, { connected: true, allowHalfOpen: true });
      owned(accepted);
      first.on('error', () => undefined);
      first[end](); // Node closes the fd now; 'close' comes a turn of the loop later
      const reused = newSocket(); // the lowest free number: the one just closed
      expect(reused).toBe(accepted);
      const second = adoptSocket(reused, { connected: false, allowHalfOpen: true });
      owned(reused);
      second.destroy();
      client.destroy();
    }
  });
});
