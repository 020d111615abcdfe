import fs from 'node:fs';
import type http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import type { Subscription } from 'rxjs';
import { createRedirector, type Redirector } from '../../redirector/redirector.js';
import type { Destination } from '../../model/match-rule.js';
import { tempRegistry } from '../../testing/harness.js';
import { createHttpsAgent } from './agent.js';
import { relay } from '../../net/relay.js';

// A self-signed certificate for localhost and 127.0.0.1, for tests only.
const cert = fs.readFileSync(new URL('../../../test-fixtures/tls/localhost.crt', import.meta.url));
const key = fs.readFileSync(new URL('../../../test-fixtures/tls/localhost.key', import.meta.url));

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

interface HttpsOrigin extends AsyncDisposable {
  readonly port: number;
  /** The SNI name each request's connection carried. */
  readonly servernames: (string | false | null)[];
}

async function startHttpsOrigin(): Promise<HttpsOrigin> {
  const servernames: HttpsOrigin['servernames'] = [];
  const server = https.createServer({ key, cert }, (req, res) => {
    servernames.push((req.socket as tls.TLSSocket).servername);
    res.end(`hello ${req.url ?? ''}`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    servernames,
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function get(agent: http.Agent, port: number, path: string): Promise<{ body: string; reusedSocket: boolean }> {
  return new Promise((resolve, reject) => {
    // family 4: 'localhost' may resolve to ::1 first, and the origin listens on 127.0.0.1.
    const request = https.get({ host: 'localhost', family: 4, port, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk)).on('end', () => resolve({ body, reusedSocket: request.reusedSocket }));
    });
    request.on('error', reject);
  });
}

/** A vendor that forwards every flow and notes where each was going. */
function forwardAll(r: Redirector): { seen: Destination[]; subscription: Subscription } {
  const seen: Destination[] = [];
  const subscription = r.accepted$.subscribe((connection) => {
    seen.push(connection.originalDestination);
    connection.connectOnward().then(
      (upstream) => void relay(connection.socket, upstream),
      () => connection.socket.destroy(),
    );
  });
  return { seen, subscription };
}

describe('createHttpsAgent', () => {
  it('sends https.get through a redirector with SNI intact and reuses the connection for the next request', async () => {
    using registry = tempRegistry();
    await using origin = await startHttpsOrigin();
    await using r = createRedirector({ id: uniqueId('tls'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const { seen, subscription } = forwardAll(r);
    await r.installed();
    const agent = createHttpsAgent({ ca: cert, registry: registry.path, keepAlive: true });

    const first = await get(agent, origin.port, '/one');
    const second = await get(agent, origin.port, '/two');

    expect(first).toEqual({ body: 'hello /one', reusedSocket: false });
    expect(second).toEqual({ body: 'hello /two', reusedSocket: true });
    expect(seen).toEqual([{ address: '127.0.0.1', port: origin.port, family: 4 }]); // one connection for both
    expect(origin.servernames).toEqual(['localhost', 'localhost']);
    agent.destroy();
    subscription.unsubscribe();
  });

  it('fails the request with a certificate error when the origin is not signed by the given ca', async () => {
    using registry = tempRegistry();
    await using origin = await startHttpsOrigin();
    await using r = createRedirector({ id: uniqueId('badca'), priority: 1, match: { ports: [origin.port] }, registry: registry.path });
    const { seen, subscription } = forwardAll(r);
    await r.installed();
    const agent = createHttpsAgent({ ca: tls.rootCertificates[0], registry: registry.path });

    await expect(get(agent, origin.port, '/')).rejects.toMatchObject({ code: 'DEPTH_ZERO_SELF_SIGNED_CERT' });
    expect(seen).toHaveLength(1); // redirected, then refused by the client's own verification
    expect(origin.servernames).toEqual([]);
    agent.destroy();
    subscription.unsubscribe();
  });
});
