import { createSecretKey, randomBytes } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { type CoproxyError, PeerNotAuthorisedError, RecordsMismatchError } from '../../model/errors.js';
import { connectWithRecords } from './connect.js';
import { type Backend, type FlowSink, type InstallSpec, type Installation, defineBackend, remoteEndpoint } from '../backend.js';
import { type DatagramListener, listenDatagrams } from './datagram-listener.js';
import { verifyFlowHeaderAuth } from './flow-header.js';
import { tcpPeerUid } from '../../net/peer-uid.js';
import type { ProxyV2Header } from './proxy-v2.js';
import { asCoproxyError, readFlowHeader } from './read-flow-header.js';
import { defaultRegistryDir, publishEntry, removeEntry, SECRET_BYTES } from './registry.js';

/**
 * The default backend: a userspace redirect layer for any OS, no privileges. Installing
 * publishes a registry entry; `connect()` in any process then sends matching connections
 * to this listener with a PROXY v2 header, which is read here before the flow is handed on.
 * Cooperative: an app that does not use the connector is not redirected.
 *
 * The listener is a loopback port any local process can reach, so it serves only peers
 * that prove they read this installation's registry entry (which only the registry's
 * owner and root can): each header must end with an HMAC made with the entry's secret.
 * Anyone else is refused before any TLV of their header is interpreted, and nothing is
 * dialled for them; the redirector also refuses destinations outside its match rule.
 */
/** The registry's entry: any platform, no options of its own beyond the generic ones. */
export const embedded = defineBackend({ name: 'embedded', specify: (spec) => spec, open: () => embeddedBackend });

export const embeddedBackend: Backend = {
  name: 'embedded',
  async install(spec: InstallSpec, sink: FlowSink): Promise<Installation> {
    const registry = spec.registry === undefined ? defaultRegistryDir() : path.resolve(spec.registry);
    const nonce = randomBytes(8).toString('hex');
    // Per installation: a new one for every install, never reused, never sent.
    const secret = randomBytes(SECRET_BYTES);
    const key = createSecretKey(secret);
    const owner = process.getuid?.();
    /**
     * First the tag (an HMAC, no system call), then the kernel's word on who owns the
     * connecting socket: a valid tag from another uid means the secret leaked, and a
     * refusal names the peer's uid for whoever reads the event. The uid lookup is one
     * exact sock_diag query per connection (see net/peer-uid.ts), never a /proc scan.
     */
    const authenticate = (socket: net.Socket) => (raw: Buffer, header: ProxyV2Header): void => {
      const refused = verifyFlowHeaderAuth(raw, header, key);
      if (refused !== undefined) throw new PeerNotAuthorisedError(spec.id, refused, peerUid(socket));
      if (owner === undefined) return;
      const uid = peerUid(socket);
      if (uid !== undefined && uid !== owner) throw new PeerNotAuthorisedError(spec.id, 'peer-uid', uid);
    };
    const inHandshake = new Set<net.Socket>();
    let uninstalled = false;

    // Half-open allowed: a client's FIN must reach the origin while the reply still flows.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      inHandshake.add(socket);
      readFlowHeader(socket, { timeoutMs: spec.headerTimeoutMs, maxHeaderBytes: spec.maxHeaderBytes, authenticate: authenticate(socket) }).then(
        ({ flow, headerBytes }) => {
          inHandshake.delete(socket);
          if (uninstalled) return void socket.destroy();
          const redirectedBy = flow.records.redirectedBy;
          if (redirectedBy[redirectedBy.length - 1] !== spec.id) {
            reject(new RecordsMismatchError(spec.id, redirectedBy));
            return;
          }
          sink.accepted({
            socket,
            originalDestination: flow.destination,
            source: { ...flow.source, ...(flow.pid !== undefined && { pid: flow.pid }) },
            records: flow.records,
            context: flow.context,
            framingBytes: headerBytes,
            connectOnward: (onward, { timeoutMs }) =>
              connectWithRecords(
                { host: flow.destination.address, port: flow.destination.port, registry, allowHalfOpen: true, timeoutMs },
                onward.records,
              ),
          });
        },
        (error: unknown) => {
          inHandshake.delete(socket);
          reject(asCoproxyError(error));
        },
      );
      function reject(error: CoproxyError): void {
        // The peer's address is read only here: getpeername per accepted flow adds up.
        const remote = remoteEndpoint(socket);
        socket.destroy();
        if (!uninstalled) sink.rejected(error, remote);
      }
    });

    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: spec.listen.host, port: spec.listen.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const address = server.address() as net.AddressInfo;
    // A listener on every interface is dialled on loopback: "0.0.0.0" is no destination.
    const dialable = address.address === '0.0.0.0' ? '127.0.0.1' : address.address === '::' ? '::1' : address.address;
    const listening = { address: dialable, port: address.port };
    // After listen, a server error (accept failing for good) ends this installation.
    server.on('error', (error) => sink.failed(error));
    let udp: DatagramListener | undefined;
    try {
      // UDP (match.udpPorts): a datagram listener beside this one (datagram-listener.ts).
      if (spec.udp !== undefined) {
        udp = await listenDatagrams({ spec, limits: spec.udp, sink, key, registry, isUninstalled: () => uninstalled });
      }
      publishEntry(registry, {
        format: 1,
        id: spec.id,
        priority: spec.priority,
        match: spec.match.rule,
        failMode: spec.failMode,
        listen: { host: listening.address, port: listening.port },
        ...(udp !== undefined && { udpListen: udp.listening }),
        pid: process.pid,
        nonce,
        secret: secret.toString('base64'),
        ...(spec.context !== undefined && { context: spec.context.toString('base64') }),
        startedAt: new Date().toISOString(),
      });
    } catch (error) {
      server.close();
      udp?.close();
      throw error;
    }

    return {
      listening,
      uninstall() {
        if (uninstalled) return;
        uninstalled = true;
        removeEntry(registry, spec.id, nonce);
        server.close(); // stops accepting; established flows finish on their own
        udp?.close(); // UDP flows share the listening socket: they end with it
        for (const socket of inHandshake) socket.destroy();
        inHandshake.clear();
      },
    };
  },
};

/** Who owns the other end of an accepted socket, where the platform can say. */
function peerUid(socket: net.Socket): number | undefined {
  const { remoteAddress, remotePort, localAddress, localPort } = socket;
  if (remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) return undefined;
  return tcpPeerUid({ address: remoteAddress, port: remotePort }, { address: localAddress, port: localPort });
}
