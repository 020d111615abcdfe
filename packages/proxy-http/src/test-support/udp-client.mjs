// proxy-http's kernel tests: an unmodified UDP client (plain node:dgram) in the namespace,
// redirected by the kernel. Prints one JSON line. argv: <host> <port> <mode> [sizes...]
//   echo:    one datagram of random bytes per size, each waited for; reports each reply's
//            source and whether it came back byte for byte.
//   refused: sends up to 30 datagrams 100 ms apart until the socket reports ECONNREFUSED
//            (ICMP port unreachable for this flow), or an answer comes.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';

const [host, portText, mode, ...sizes] = process.argv.slice(2);
const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
const done = (result) => {
  clearTimeout(overall);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  socket.close();
};
const overall = setTimeout(() => done({ error: 'no result within 8 s' }), 8000);

socket.connect(Number(portText), host, async () => {
  const local = socket.address();
  if (mode === 'refused') {
    let attempts = 0;
    const timer = setInterval(() => (++attempts <= 30 ? socket.send(randomBytes(32)) : undefined), 100);
    socket.on('error', (error) => {
      clearInterval(timer);
      done({ refused: error.code === 'ECONNREFUSED', code: error.code, attempts });
    });
    socket.on('message', () => {
      clearInterval(timer);
      done({ refused: false, answered: true, attempts });
    });
    socket.send(randomBytes(32));
    attempts++;
    return;
  }
  const replies = [];
  for (const size of sizes.map(Number)) {
    const payload = randomBytes(size);
    const reply = await new Promise((resolve) => {
      socket.once('message', (message, remote) => resolve({ message, remote }));
      socket.send(payload);
    });
    replies.push({ intact: reply.message.equals(payload), bytes: reply.message.length, from: `${reply.remote.address}:${reply.remote.port}` });
  }
  done({ local: `${local.address}:${local.port}`, replies });
});
