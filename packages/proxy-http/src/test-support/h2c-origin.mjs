// An h2c origin (HTTP/2 with prior knowledge, node:http2) for the kernel tests, inside the
// test's network namespace: answers every request with its headers (pseudo-headers too) and
// body length as JSON, and reports the same over IPC ({ request }).
//
// argv[2..]: addresses to listen on; argv[last]: the port. Sends { ready: true } over IPC
// once listening on all; exits when the test goes away.
import http2 from 'node:http2';

const args = process.argv.slice(2);
const port = Number(args.pop());

function answer(stream, headers) {
  let bytes = 0;
  stream.on('error', () => undefined);
  stream.on('data', (chunk) => (bytes += chunk.length));
  stream.on('end', () => {
    const seen = { headers, bytes, local: stream.session.socket.localAddress };
    process.send({ request: seen });
    stream.respond({ ':status': 200, 'content-type': 'application/json' });
    stream.end(JSON.stringify(seen));
  });
}

let pending = args.length;
for (const host of args) {
  const server = http2.createServer({ settings: { maxConcurrentStreams: 1000 } });
  server.on('stream', answer);
  server.listen({ host, port, ipv6Only: true }, () => --pending === 0 && process.send({ ready: true }));
}
process.on('disconnect', () => process.exit(0));
