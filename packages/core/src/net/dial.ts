import net from 'node:net';
import { ConnectTimeoutError } from '../model/errors.js';

export type DialOptions = net.TcpNetConnectOpts & { readonly timeoutMs?: number | undefined };

/**
 * Connects with a deadline (`COPROXY_CONNECT_TIMEOUT`) and optionally a first write.
 * `open` starts the connection; backends that prepare the socket themselves (the
 * nftables backend sets its mark) pass their own.
 */
export function dial(
  options: DialOptions,
  header?: (socket: net.Socket) => Buffer,
  open: (options: net.TcpNetConnectOpts) => net.Socket = net.connect,
): Promise<net.Socket> {
  const { timeoutMs, ...netOptions } = options;
  return new Promise((resolvePromise, reject) => {
    const socket = open(netOptions);
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => fail(new ConnectTimeoutError(`${String(options.host)}:${options.port}`, timeoutMs)), timeoutMs);
    function fail(error: Error): void {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    }
    socket.once('error', fail);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', fail);
      if (header !== undefined) {
        let bytes: Buffer;
        try {
          bytes = header(socket);
        } catch (error) {
          // Thrown inside an event handler it would be uncaught: reject instead.
          return fail(error instanceof Error ? error : new Error(String(error)));
        }
        // Corked until the next turn, so the header and the app's first write (which
        // follows the resolved promise) leave in one segment.
        socket.cork();
        socket.write(bytes);
        setImmediate(() => socket.uncork());
      }
      resolvePromise(socket);
    });
  });
}
