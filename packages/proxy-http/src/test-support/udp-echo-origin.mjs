// proxy-http's kernel tests: a UDP echo origin in the test's namespace. Every datagram goes
// back unchanged to its sender; the parent hears (IPC) who sent how many bytes to where.
// argv: <port> <address>...
import dgram from 'node:dgram';
import net from 'node:net';

const [portText, ...addresses] = process.argv.slice(2);
let bound = 0;
for (const address of addresses) {
  const socket = dgram.createSocket({ type: net.isIPv6(address) ? 'udp6' : 'udp4', ipv6Only: net.isIPv6(address) });
  socket.on('message', (payload, remote) => {
    socket.send(payload, remote.port, remote.address);
    process.send({ received: { from: `${remote.address}:${remote.port}`, to: address, bytes: payload.length } });
  });
  socket.bind(Number(portText), address, () => {
    if (++bound === addresses.length) process.send({ ready: true });
  });
}
process.on('disconnect', () => process.exit(0));
