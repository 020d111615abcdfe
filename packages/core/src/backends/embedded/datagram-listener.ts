import type { KeyObject } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { type CoproxyError, DatagramFlowLimitError, PeerNotAuthorisedError, RecordsMismatchError } from '../../model/errors.js';
import { encodeRecords } from '../../model/records-codec.js';
import { DatagramFlowTable, type DatagramPeer } from '../../net/datagram-flows.js';
import type { DatagramLimits, FlowSink, InstallSpec } from '../backend.js';
import { connectDatagramWithRecords } from './datagram-connect.js';
import { decodeDatagram } from './datagram-header.js';
import type { FlowHeader } from './flow-header.js';
import { udpPeerUid } from '../../net/peer-uid.js';
import { asCoproxyError } from './read-flow-header.js';

/**
 * The embedded backend's datagram listener (when the rule names `udpPorts`): one UDP
 * socket beside the TCP listener, published in the registry entry as `udpListen`. Every
 * datagram carries an authenticated flow header (datagram-header.ts), checked before
 * anything else in it is read; the first datagram of a client address and port opens a
 * flow, if the sending socket belongs to the registry's owner (sock_diag, as for TCP:
 * I7, since UDP has no peer credentials either). Later datagrams of the flow must name
 * the same destination and records, or they are dropped.
 *
 * `reject()` ends the flow; the app's socket hears nothing more (no ICMP: the listener is
 * a port that stays open for other flows), so it gives up at its own timeout.
 */
export interface DatagramListener {
  readonly listening: { readonly host: string; readonly port: number };
  close(): void;
}

export async function listenDatagrams(options: {
  readonly spec: InstallSpec;
  readonly limits: DatagramLimits;
  readonly sink: FlowSink;
  readonly key: KeyObject;
  readonly registry: string;
  readonly isUninstalled: () => boolean;
}): Promise<DatagramListener> {
  const { spec, limits, sink, key, registry } = options;
  const host = spec.listen.host === 'localhost' ? '127.0.0.1' : spec.listen.host;
  const v6 = net.isIPv6(host);
  const socket = dgram.createSocket({ type: v6 ? 'udp6' : 'udp4' });
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address: host, port: 0 }, () => {
      socket.off('error', reject);
      resolve();
    });
  });
  const { address, port } = socket.address();
  const owner = process.getuid?.();
  const local = { address, port };
  const peerUid = (peer: DatagramPeer) => () => udpPeerUid(peer, local);

  const table = new DatagramFlowTable<FlowHeader>(socket, {
    ...limits,
    unwrap(datagram, peer, _flow, first) {
      const decoded = decodeDatagram(datagram, key, { redirectorId: spec.id, maxHeaderBytes: spec.maxHeaderBytes, peerUid: peerUid(peer) });
      // A signed header naming another destination or other records than the open flow of
      // this address and port: the client's socket is gone and a new one got its port (a
      // connectDatagram() socket always sends one header). It begins a new flow, accepted
      // and judged from its first datagram; nothing of it joins the old flow.
      return { payload: decoded.payload, header: decoded.flow, newFlow: first !== undefined && !sameFlow(first, decoded.flow) };
    },
    opened(endpoint, flow) {
      if (owner !== undefined) {
        const uid = peerUid(endpoint.peer)();
        if (uid !== undefined && uid !== owner) throw new PeerNotAuthorisedError(spec.id, 'peer-uid', uid);
      }
      const redirectedBy = flow.records.redirectedBy;
      if (redirectedBy[redirectedBy.length - 1] !== spec.id) throw new RecordsMismatchError(spec.id, redirectedBy);
      if (options.isUninstalled()) return endpoint.end('listener-closed');
      sink.acceptedDatagram?.({
        endpoint,
        originalDestination: flow.destination,
        source: { ...flow.source, ...(flow.pid !== undefined && { pid: flow.pid }) },
        records: flow.records,
        context: flow.context,
        reject: () => undefined, // ending the flow is all this backend can do (see above)
        connectOnward: (onward) => connectDatagramWithRecords({ host: flow.destination.address, port: flow.destination.port, registry }, onward.records),
      });
    },
    refused(peer, reason) {
      const error: CoproxyError = reason.kind === 'full' ? new DatagramFlowLimitError(spec.id, limits.maxFlows) : asCoproxyError(reason.error);
      if (!options.isUninstalled()) sink.rejected(error, { address: peer.address, port: peer.port });
    },
  });
  socket.on('error', (error) => sink.failed(error));
  return {
    listening: { host: address, port },
    close() {
      table.close();
      socket.close();
    },
  };
}

function sameFlow(a: FlowHeader, b: FlowHeader): boolean {
  return (
    a.destination.address === b.destination.address &&
    a.destination.port === b.destination.port &&
    encodeRecords(a.records).equals(encodeRecords(b.records))
  );
}
