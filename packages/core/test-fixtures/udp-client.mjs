// An unmodified UDP client (plain node:dgram, nothing of coproxy): a connected socket to
// <host>:<port>; prints one JSON line to stdout.
// argv: <host> <port> <mode> [sizes...]
//   echo:    sends one datagram per size (random bytes), waits for each echo; reports the
//            source of each reply and whether the bytes came back intact.
//   refused: sends a datagram up to 40 times, 100 ms apart, until the kernel reports
//            ECONNREFUSED (an ICMP port unreachable for this flow); reports how it ended.
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';

const [host, portText, mode, ...sizes] = process.argv.slice(2);
const port = Number(portText);
const socket = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
const done = (result) => {
  process.stdout.write(`${JSON.stringify(result)}\n`);
  socket.close();
};
const overall = setTimeout(() => done({ error: 'timed out' }), 8000);

socket.connect(port, host, async () => {
  const local = socket.address();
  if (mode === 'refused') {
    let attempts = 0;
    socket.on('error', (error) => {
      clearTimeout(overall);
      clearInterval(timer);
      done({ refused: error.code === 'ECONNREFUSED', code: error.code, attempts });
    });
    socket.on('message', () => {
      clearTimeout(overall);
      clearInterval(timer);
      done({ refused: false, answered: true, attempts });
    });
    const send = () => {
      if (++attempts > 40) return;
      socket.send(randomBytes(32));
    };
    const timer = setInterval(send, 100);
    send();
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
  clearTimeout(overall);
  done({ local: `${local.address}:${local.port}`, replies });
});
