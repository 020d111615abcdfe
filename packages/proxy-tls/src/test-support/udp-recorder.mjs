// A UDP listener that reports every datagram it receives to its parent (IPC), as hex with
// its source, and never answers: what a client sends first to a QUIC server that is not
// there. Run in a network namespace by the QUIC capture test. Not part of the build.
// Usage: node udp-recorder.mjs <address> <port>
import dgram from 'node:dgram';

const [address, port] = process.argv.slice(2);
const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
socket.on('message', (message, rinfo) => process.send?.({ datagram: message.toString('hex'), from: `${rinfo.address}:${rinfo.port}` }));
socket.on('error', (error) => {
  console.error(`udp-recorder: ${error.message}`);
  process.exit(1);
});
socket.bind(Number(port), address, () => process.send?.({ listening: true }));
process.on('disconnect', () => process.exit(0));
