// A vendor in its own OS process, for the multi-process tests: a pass-through redirector
// that reports each flow it accepts to its parent over IPC. Runs the built package.
import { createRedirector, relay } from '../dist/index.js';

const [id, priority, registry, port, failMode = 'open', propagate = 'true'] = process.argv.slice(2);
const redirector = createRedirector({
  id,
  priority: Number(priority),
  registry,
  match: { ports: [Number(port)] },
  failMode,
});

redirector.accepted$.subscribe((conn) => {
  const { socket } = conn;
  const chunks = [];
  const onData = (chunk) => {
    chunks.push(chunk);
    const head = Buffer.concat(chunks);
    const newline = head.indexOf(0x0a);
    if (newline < 0) return;
    socket.pause();
    socket.off('data', onData);
    const tag = head.subarray(0, newline).toString().replace(/^FLOW /, '');
    process.send({ accepted: { tag, state: conn.state, redirectedBy: conn.records.redirectedBy, pid: conn.source.pid } });
    conn.connectOnward({ propagateRecords: propagate === 'true' }).then(
      (upstream) => {
        upstream.write(head);
        void relay(socket, upstream);
      },
      () => socket.destroy(),
    );
  };
  socket.on('data', onData);
});

const listening = await redirector.installed();
process.send({ ready: listening.port });
const stop = () => void redirector.close().then(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('disconnect', stop);
process.on('message', (message) => message === 'exit-without-close' && process.exit(0));
