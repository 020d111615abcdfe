// A loopback stand-in for core's UDP flows (no redirect layer, no root): real UDP sockets,
// shaped like the part of `AcceptedDatagramFlow` the QUIC flow uses (`QuicFlow`). The
// vendor's socket takes the first client's datagrams as one flow; `connectOnward()` opens
// a socket connected to the given destination. It carries no records and no original
// destination (core's job): it is here so that the vendor side relays through real
// sockets in a test. Not part of the build.
import dgram from 'node:dgram';
import { Observable, ReplaySubject } from 'rxjs';
import type { QuicFlow, QuicOnwardSocket } from '../quic-flow.js';

function bound(socket: dgram.Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(0, '127.0.0.1', () => resolve(socket.address().port));
  });
}

export interface LoopbackFlowListener extends AsyncDisposable {
  readonly port: number;
  /** The first client's flow, once its first datagram arrived. */
  readonly flow: Promise<QuicFlow & { readonly rejected: string | undefined }>;
}

/** A vendor-side UDP socket on 127.0.0.1 whose first client becomes one flow, relayed onward to `destination`. */
export async function loopbackFlowListener(destination: { address: string; port: number }): Promise<LoopbackFlowListener> {
  const socket = dgram.createSocket('udp4');
  const port = await bound(socket);
  const onwardSockets = new Set<dgram.Socket>();
  const flow = new Promise<QuicFlow & { readonly rejected: string | undefined }>((resolve) => {
    // Replayed: the flow's first datagram comes before the vendor subscribes.
    const client = new ReplaySubject<Buffer>();
    let source: dgram.RemoteInfo | undefined;
    socket.on('message', (message, rinfo) => {
      if (source === undefined) {
        source = rinfo;
        const peer = rinfo;
        const state = { rejected: undefined as string | undefined };
        resolve({
          transport: 'udp',
          id: `udp-${peer.port}`,
          originalDestination: { ...destination, family: 4 },
          source: { address: peer.address, port: peer.port },
          datagrams$: client.asObservable(),
          get rejected() {
            return state.rejected;
          },
          send: (payload) => socket.send(payload, peer.port, peer.address),
          async connectOnward(): Promise<QuicOnwardSocket> {
            const onward = dgram.createSocket('udp4');
            onwardSockets.add(onward);
            await new Promise<void>((ok, fail) => {
              onward.once('error', fail);
              onward.connect(destination.port, destination.address, () => ok());
            });
            const answers$ = new Observable<Buffer>((subscriber) => {
              const onMessage = (answer: Buffer): void => subscriber.next(answer);
              const onClose = (): void => subscriber.complete();
              onward.on('message', onMessage);
              onward.once('close', onClose);
              return () => {
                onward.off('message', onMessage);
                onward.off('close', onClose);
              };
            });
            return {
              send: (payload) => onward.send(payload),
              datagrams$: answers$,
              close: () => {
                if (onwardSockets.delete(onward)) onward.close();
              },
            };
          },
          reject: (reason) => {
            // Userspace cannot send the ICMP port unreachable core will; the flow just ends.
            state.rejected = reason;
            client.complete();
          },
          close: () => client.complete(),
        });
      }
      if (rinfo.port === source.port && rinfo.address === source.address) client.next(message);
    });
  });
  return {
    port,
    flow,
    async [Symbol.asyncDispose]() {
      for (const onward of onwardSockets) onward.close();
      onwardSockets.clear();
      await new Promise<void>((resolve) => socket.close(() => resolve()));
    },
  };
}

/** A UDP socket on 127.0.0.1 that records what it receives and answers each datagram with `answer(datagram)`. */
export async function recordingUdpServer(answer: (datagram: Buffer) => Buffer): Promise<AsyncDisposable & { readonly port: number; readonly received: Buffer[] }> {
  const socket = dgram.createSocket('udp4');
  const port = await bound(socket);
  const received: Buffer[] = [];
  socket.on('message', (message, rinfo) => {
    received.push(message);
    socket.send(answer(message), rinfo.port, rinfo.address);
  });
  return { port, received, [Symbol.asyncDispose]: () => new Promise<void>((resolve) => socket.close(() => resolve())) };
}
