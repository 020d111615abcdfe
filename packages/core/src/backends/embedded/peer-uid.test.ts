import { spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { tcpPeerUid } from '../../net/peer-uid.js';

/** A loopback server and one accepted connection from `connect`; resolves with the accepted socket's two ends. */
async function acceptOne(host: string, connect: (port: number) => void): Promise<{ peer: net.AddressInfo; local: net.AddressInfo; socket: net.Socket; server: net.Server }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  connect((server.address() as net.AddressInfo).port);
  const socket = await accepted;
  await new Promise((resolve) => socket.once('data', resolve)); // the client is connected and said so
  const peer = { address: socket.remoteAddress!, port: socket.remotePort!, family: socket.remoteFamily! };
  const local = { address: socket.localAddress!, port: socket.localPort!, family: socket.localFamily! };
  return { peer, local, socket, server };
}

describe.skipIf(process.platform !== 'linux')('tcpPeerUid', () => {
  it.each(['127.0.0.1', '::1'])('names this process\'s uid for its own loopback client (%s), and nothing for a port nobody uses', async (host) => {
    let client: net.Socket | undefined;
    const { peer, local, socket, server } = await acceptOne(host, (port) => (client = net.connect(port, host, () => client!.write('x'))));
    expect(tcpPeerUid(peer, local)).toBe(process.getuid!());
    expect(tcpPeerUid({ ...peer, port: peer.port === 1 ? 2 : 1 }, local)).toBeUndefined();
    client!.destroy();
    socket.destroy();
    server.close();
  });

  // Only root can start a process as another user; CI runs as root.
  it.skipIf(process.getuid?.() !== 0)('names the uid of a client that runs as another user (65534)', async () => {
    const script = `const s = require('node:net').connect(Number(process.argv[1]), '127.0.0.1', () => s.write('x')); s.on('close', () => process.exit(0));`;
    const { peer, local, socket, server } = await acceptOne('127.0.0.1', (port) =>
      spawn(process.execPath, ['-e', script, String(port)], { uid: 65534, gid: 65534, cwd: os.tmpdir(), stdio: 'ignore' }),
    );
    expect(tcpPeerUid(peer, local)).toBe(65534);
    socket.destroy(); // the child exits when its connection closes
    server.close();
  });
});
