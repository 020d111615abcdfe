// An HTTP origin inside a test's network namespace that answers each request with what
// it saw: the SO_MARK its accepted socket carries (net.ipv4.tcp_fwmark_accept must be 1),
// the body's length and SHA-256, and the address it was reached on.
//
// argv[2..]: addresses to listen on; argv[last] the port. Sends { ready: true } over IPC.
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import http from 'node:http';

const koffi = createRequire(import.meta.url)('koffi');
const getsockopt = koffi.load('libc.so.6').func('int getsockopt(int, int, int, _Out_ void *, _Inout_ uint32_t *)');
const SOL_SOCKET = 1;
const SO_MARK = 36;

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
    const mark = Buffer.alloc(4);
    getsockopt(req.socket._handle.fd, SOL_SOCKET, SO_MARK, mark, [4]);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ mark: mark.readUInt32LE(0), bytes, sha256: hash.digest('hex'), local: req.socket.localAddress }));
  });
}
let pending = args.length;
for (const host of args) {
  http.createServer(answer).listen({ host, port, ipv6Only: true }, () => --pending === 0 && process.send({ ready: true }));
}
process.on('disconnect', () => process.exit(0));
