// A bench's child for the kit's own tests: `serve MARKER` counts connections and writes
// MARKER when it is closed; `fail` exits before it is ready; `silent MARKER` writes its pid there and never says ready.
import fs from 'node:fs';
import net from 'node:net';
import { serveForked } from '../dist/index.js';

const [role, marker] = process.argv.slice(2);
if (role === 'serve') {
  serveForked('kit-test serve', async () => {
    let accepted = 0;
    const server = net.createServer((socket) => {
      accepted++;
      socket.end();
    });
    await new Promise((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    return {
      port: server.address().port,
      stats: () => ({ accepted, pid: process.pid }),
      close: async () => {
        await new Promise((resolve) => server.close(resolve));
        fs.writeFileSync(marker, 'closed');
      },
    };
  });
} else if (role === 'fail') {
  process.exit(3);
} else if (role === 'silent') {
  fs.writeFileSync(marker, String(process.pid));
  setInterval(() => undefined, 1000);
}
