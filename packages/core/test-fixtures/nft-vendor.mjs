// A vendor on the nftables backend, in its own OS process inside a test's network
// namespace: a pass-through redirector that reports to its parent over IPC. Runs the
// built package. It installs no signal handlers, so SIGINT/SIGTERM take coproxy's default
// path (tables removed, then the signal's default action).
//
// argv[2]: JSON { id, priority, ports, failMode?, propagate?, markMask?, maxAccepts?, context?, dropTo? }
// messages out: { ready: { port } } | { accepted: {...} } | { rejected: { code, message } }
//               | { failed: { code, message } } | { closed: true }
// messages in:  'close' (close the redirector and stay alive) | 'exit' (close, then exit 0)
import { createRedirector, relay } from '../dist/index.js';

const options = JSON.parse(process.argv[2]);
const maxAccepts = options.maxAccepts ?? 1000;
let accepts = 0;

if (options.dropTo !== undefined) {
  // An unprivileged vendor: root's capabilities go with the uid.
  process.setgid(options.dropTo);
  process.setuid(options.dropTo);
}

let redirector;
try {
  redirector = createRedirector({
    id: options.id,
    priority: options.priority,
    backend: 'nftables',
    match: { ports: options.ports },
    failMode: options.failMode ?? 'open',
    ...(options.markMask !== undefined && { markMask: options.markMask }),
    ...(options.context !== undefined && { context: Buffer.from(options.context) }),
  });
} catch (error) {
  process.send({ failed: { code: error.code, message: error.message } });
  process.exit(3);
}

redirector.events$.subscribe((event) => {
  if (event.type === 'rejected') process.send({ rejected: { code: event.error.code, message: event.error.message } });
});

redirector.accepted$.subscribe({
  next(conn) {
    accepts++;
    let context;
    try {
      context = conn.context().toString();
    } catch (error) {
      context = error.code;
    }
    process.send({
      accepted: {
        destination: conn.originalDestination,
        redirectedBy: conn.records.redirectedBy,
        state: conn.state,
        source: { address: conn.source.address, port: conn.source.port, pid: conn.source.pid },
        context,
      },
    });
    // A bound on any loop a test provokes: past it, flows are dropped rather than forwarded.
    if (accepts > maxAccepts) return void conn.socket.destroy();
    conn.connectOnward({ propagateRecords: options.propagate ?? true }).then(
      (upstream) => void relay(conn.socket, upstream),
      (error) => {
        process.send({ onwardFailed: { code: error.code, message: error.message } });
        conn.socket.destroy();
      },
    );
  },
  error(error) {
    process.send({ failed: { code: error.code, message: error.message } }, () => process.exit(3));
  },
});

const listening = await redirector.installed().catch(() => undefined);
if (listening !== undefined) process.send({ ready: listening });

process.on('message', (message) => {
  if (message === 'close' || message === 'exit') {
    void redirector.close().then(() => {
      process.send({ closed: true });
      if (message === 'exit') process.exit(0);
    });
  }
});
process.on('disconnect', () => process.exit(0));
