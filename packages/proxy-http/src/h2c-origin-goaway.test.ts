import http2 from 'node:http2';
import { describe, expect, it } from 'vitest';
import { startProxy } from './test-support/harness.js';
import { h2Client, startH2cOrigin } from './test-support/h2.js';

/**
 * An origin that drains its connection (GOAWAY, as servers do before a restart) while one
 * of the client's streams is still open on it: the client's next streams must go over a
 * new origin connection, not fail against the one that said goodbye.
 */
describe('h2c origin GOAWAY', () => {
  it('dials a new origin connection for streams that follow an origin’s GOAWAY', async () => {
    const held: http2.ServerHttp2Stream[] = [];
    await using origin = await startH2cOrigin((stream, headers) => {
      if (headers[':path'] === '/hold') {
        held.push(stream);
        return true;
      }
      if (headers[':path'] === '/last') {
        stream.respond({ ':status': 200 });
        stream.end('last');
        stream.session?.goaway(http2.constants.NGHTTP2_NO_ERROR);
        return true;
      }
      return false;
    });
    await using under = await startProxy([origin.port]);
    await using client = await h2Client(under.registry, origin.port);
    const hold = client.request({ ':path': '/hold' }).catch((error: Error) => error);
    expect((await client.request({ ':path': '/last' })).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 200)); // the GOAWAY reaches the proxy

    const after = await client.request({ ':path': '/after' });

    expect(after.status).toBe(200);
    // The held stream still completes over the drained connection.
    for (const stream of held) {
      stream.respond({ ':status': 200 });
      stream.end('held');
    }
    expect(await hold).toMatchObject({ status: 200 });
  });
});
