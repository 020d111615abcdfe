// An HTTP origin for the kernel tests, inside the test's network namespace: answers every
// request with what it received, as JSON (method, url, headers, the body's length and
// SHA-256), and reports the same over IPC ({ request }), so a test knows which requests
// reached it and which a proxy kept away.
//
// argv[2..]: addresses to listen on; argv[last]: the port. Sends { ready: true } over IPC
// once listening on all; exits when the test goes away.
import { createHash } from 'node:crypto';
import http from 'node:http';

const args = process.argv.slice(2);
const port = Number(args.pop());

function answer(req, res) {
  const hash = createHash('sha256');
  let bytes = 0;
  req.on('data', (chunk) => {
    bytes += chunk.length;
    hash.update(chunk);
  });
  req.on('end', () => {
    const seen = { method: req.method, url: req.url, headers: req.headers, bytes, sha256: hash.digest('hex'), local: req.socket.localAddress };
    process.send({ request: seen });
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(seen));
  });
}

let pending = args.length;
for (const host of args) {
  http.createServer(answer).listen({ host, port, ipv6Only: true }, () => --pending === 0 && process.send({ ready: true }));
}
process.on('disconnect', () => process.exit(0));
