// A UDP echo origin: sends every datagram back unchanged to where it came from, and tells
// its parent (IPC) who sent it. argv: <port> <address>...
import dgram from 'node:dgram';
import net from 'node:net';

const [portText, ...addresses] = process.argv.slice(2);
let bound = 0;
for (const address of addresses) {
  const socket = dgram.createSocket({ type: net.isIPv6(address) ? 'udp6' : 'udp4', ipv6Only: net.isIPv6(address) });
  socket.on('message', (payload, remote) => {
    socket.send(payload, remote.port, remote.address);
    process.send({ received: { from: `${remote.address}:${remote.port}`, local: `${address}:${portText}`, bytes: payload.length } });
  });
  socket.bind(Number(portText), address, () => {
    if (++bound === addresses.length) process.send({ ready: true });
  });
}
