// @coproxy/core/testing: a loopback port that refuses connections, for tests of what a
// vendor does when nothing answers. Re-exported by netns.ts (the package's testing entry).
import net from 'node:net';

/** A port on 127.0.0.1 that refuses every connection until disposed. */
export interface RefusingPort extends AsyncDisposable {
  readonly port: number;
}

/**
 * A loopback port that nothing listens on and nothing else can take while the test runs:
 * the local end of a live loopback connection this helper holds open. A connection to it is
 * refused (ECONNREFUSED), and a listen on it fails with EADDRINUSE. A port found free and
 * closed again is not that: listen(0) anywhere on the machine (another package's tests run
 * at the same time) may be handed it before the test dials it.
 */
export async function refusingPort(): Promise<RefusingPort> {
  const server = net.createServer();
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const holder = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
  const connected = new Promise<void>((resolve, reject) => holder.once('connect', resolve).once('error', reject));
  const [far] = await Promise.all([accepted, connected]);
  return {
    port: holder.localPort!,
    async [Symbol.asyncDispose]() {
      holder.destroy();
      far.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
