// A vendor relaying UDP flows on the nftables backend, in its own OS process inside a
// test's network namespace; reports to its parent over IPC. Runs the built package.
//
// argv[2]: JSON { id, priority, udpPorts, reject?, maxUdpFlows?, propagate? }
// messages out: { ready } | { accepted: {...} } | { closed: {...} } | { rejected: { code } } | { failed } | { closedRedirector: true }
// messages in:  'close' (close the redirector and stay alive)
import { createRedirector } from '../dist/index.js';

const options = JSON.parse(process.argv[2]);
let redirector;
try {
  redirector = createRedirector({
    id: options.id,
    priority: options.priority,
    backend: 'nftables',
    match: { udpPorts: options.udpPorts },
    ...(options.maxUdpFlows !== undefined && { maxUdpFlows: options.maxUdpFlows }),
    ...(options.udpIdleTimeoutMs !== undefined && { udpIdleTimeoutMs: options.udpIdleTimeoutMs }),
  });
} catch (error) {
  process.send({ failed: { code: error.code, message: error.message } });
  process.exit(3);
}

redirector.events$.subscribe((event) => {
  if (event.type === 'rejected') process.send({ rejected: { code: event.error.code, message: event.error.message } });
  if (event.type === 'closed') {
    process.send({
      closed: {
        id: event.connectionId,
        transport: event.transport,
        endedBy: event.endedBy,
        datagramsFromClient: event.datagramsFromClient,
        datagramsToClient: event.datagramsToClient,
        bytesFromClient: event.bytesFromClient,
        bytesToClient: event.bytesToClient,
      },
    });
  }
});

redirector.accepted$.subscribe({
  next(flow) {
    process.send({
      accepted: {
        id: flow.id,
        transport: flow.transport,
        destination: flow.originalDestination,
        redirectedBy: flow.records.redirectedBy,
        state: flow.state,
        source: { address: flow.source.address, port: flow.source.port },
      },
    });
    if (flow.transport !== 'udp') return void flow.socket.destroy();
    if (options.reject === true) return flow.reject('test policy: block');
    flow.connectOnward({ propagateRecords: options.propagate ?? true }).then(
      (onward) => {
        flow.datagrams$.subscribe({ next: (payload) => onward.send(payload), complete: () => onward.close() });
        onward.datagrams$.subscribe({ next: (payload) => flow.send(payload), error: () => flow.close() });
      },
      (error) => {
        process.send({ onwardFailed: { code: error.code, message: error.message } });
        flow.close();
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
  if (message === 'close') void redirector.close().then(() => process.send({ closedRedirector: true }));
  if (message === 'cpu') process.send({ cpu: process.cpuUsage() });
});
