// A process trying to skip inspection by forging a redirect record: it sets the
// guarding redirector's mark bit on its own socket before connecting to the origin.
// argv: uid (0 = stay root, the control) bit host port. Prints one JSON line:
// { uid, setsockopt: 'ok' | '<errno name>', reply: <the origin's JSON> }.
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';

const [uid, bit, host, port] = process.argv.slice(2).map((v, i) => (i === 2 ? v : Number(v)));
const koffi = createRequire(import.meta.url)('koffi');
const libc = koffi.load('libc.so.6');
const socket = libc.func('int socket(int, int, int)');
const setsockopt = libc.func('int setsockopt(int, int, int, const void *, uint32_t)');
const close = libc.func('int close(int)');
const AF_INET = 2, SOCK_STREAM = 1, SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000, SOL_SOCKET = 1, SO_MARK = 36;

if (uid !== 0) {
  process.setgid(uid);
  process.setuid(uid);
}
const fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
const value = Buffer.alloc(4);
value.writeUInt32LE(bit >>> 0);
let result = 'ok';
let conn;
if (setsockopt(fd, SOL_SOCKET, SO_MARK, value, 4) === 0) {
  conn = new net.Socket({ fd, manualStart: true }).connect(port, host);
} else {
  const errno = koffi.errno();
  result = Object.entries(os.constants.errno).find(([, n]) => n === errno)?.[0] ?? String(errno);
  close(fd);
  conn = net.connect(port, host); // the attacker gives up forging and connects plainly
}
const chunks = [];
conn.on('data', (chunk) => chunks.push(chunk));
conn.on('end', () => {
  const text = Buffer.concat(chunks).toString();
  const body = text.slice(text.indexOf('\r\n\r\n') + 4);
  process.stdout.write(`${JSON.stringify({ uid: process.getuid(), setsockopt: result, reply: JSON.parse(body) })}\n`);
});
conn.write(`POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd`);
