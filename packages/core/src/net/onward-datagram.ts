import dgram from 'node:dgram';
import { Observable, share } from 'rxjs';
import type { Destination } from '../model/match-rule.js';

/**
 * The vendor's datagram socket to a flow's original destination: connected, so it
 * receives only that peer's datagrams (the kernel filters the rest).
 */
export interface OnwardDatagramSocket {
  /** Sends one datagram to the destination. Ignored once closed. */
  send(payload: Buffer): void;
  /**
   * Datagrams from the destination, to subscribers present when they arrive; completes
   * on `close()`, errors if the socket fails (e.g. `ECONNREFUSED`: the destination
   * answered ICMP port unreachable), and the socket is then closed. ICMP errors about one
   * datagram (fragmentation needed, host or network unreachable) do not end it.
   */
  readonly datagrams$: Observable<Buffer>;
  readonly counts: { readonly datagramsOut: number; readonly bytesOut: number; readonly datagramsIn: number; readonly bytesIn: number };
  /** The socket's own address and port. */
  readonly local: { readonly address: string; readonly port: number };
  close(): void;
}

export interface OpenDatagramOptions {
  readonly destination: Destination;
  /**
   * Makes the socket's descriptor (e.g. through koffi with `SO_MARK` set, nftables), which
   * Node then takes over (`bind({ fd })`, libuv's `uv_udp_open`). Default: Node makes it.
   */
  readonly open?: () => number;
}

/**
 * ICMP errors about one datagram, not about the destination: Linux reports them on a
 * connected UDP socket like a refusal, but they are RFC 1122's soft errors (§4.2.3.9:
 * network or host unreachable may be transient) and path MTU news (fragmentation needed,
 * which QUIC's path-MTU probes meet on any path with a smaller MTU). Ending the flow on one
 * would let a router's routine message, or anyone who guesses the onward port, cut a
 * relayed flow; the datagram is lost as if dropped, and the flow idles out if nothing
 * comes back. Port and protocol unreachable (ECONNREFUSED...) still end it.
 */
const SOFT_ERRORS = new Set(['EMSGSIZE', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENONET']);

export async function openOnwardDatagram(options: OpenDatagramOptions): Promise<OnwardDatagramSocket> {
  const { destination } = options;
  const socket = dgram.createSocket({ type: destination.family === 6 ? 'udp6' : 'udp4' });
  const counts = { datagramsOut: 0, bytesOut: 0, datagramsIn: 0, bytesIn: 0 };
  let closed = false;
  let failure: Error | undefined;
  let ready = false;
  // Once set up, a hard error ends the socket: a connected UDP socket reports an ICMP port
  // unreachable from the destination as ECONNREFUSED, and nothing more will come.
  // `datagrams$` subscribers then get the error (on 'close'). Soft ones do not (see below).
  socket.on('error', (error) => {
    if (ready && SOFT_ERRORS.has((error as NodeJS.ErrnoException).code ?? '')) return;
    failure ??= error;
    if (ready && !closed) {
      closed = true;
      socket.close();
    }
  });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      const done = (): void => {
        socket.off('error', reject);
        resolve();
      };
      if (options.open === undefined) socket.bind({ port: 0, address: destination.family === 6 ? '::' : '0.0.0.0' }, done);
      else socket.bind({ fd: options.open() }, done);
    });
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(destination.port, destination.address, () => {
        socket.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    socket.close();
    throw error;
  }
  const datagrams$ = new Observable<Buffer>((subscriber) => {
    if (closed) return subscriber.complete();
    const onMessage = (payload: Buffer): void => {
      counts.datagramsIn++;
      counts.bytesIn += payload.length;
      subscriber.next(payload);
    };
    const onClose = (): void => (failure === undefined ? subscriber.complete() : subscriber.error(failure));
    socket.on('message', onMessage);
    socket.once('close', onClose);
    return () => {
      socket.off('message', onMessage);
      socket.off('close', onClose);
    };
  }).pipe(share());
  ready = true;
  const { address, port } = socket.address();
  return {
    local: { address, port },
    datagrams$,
    counts,
    send(payload) {
      if (closed) return;
      counts.datagramsOut++;
      counts.bytesOut += payload.length;
      socket.send(payload, (error) => {
        if (error !== null && error !== undefined) failure ??= error;
      });
    },
    close() {
      if (closed) return;
      closed = true;
      socket.close();
    },
  };
}
