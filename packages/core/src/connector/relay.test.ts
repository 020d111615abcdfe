import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { relay, type RelayResult } from './relay.js';

/** A client socket and the server side of it, connected over loopback. */
async function socketPair(): Promise<{ near: net.Socket; far: net.Socket; close(): void }> {
  const server = net.createServer({ allowHalfOpen: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const near = net.connect({ port: (server.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const far = await accepted;
  await new Promise((resolve) => near.once('connect', resolve));
  return { near, far, close: () => server.close() };
}

const collect = (socket: net.Socket): Promise<string> =>
  new Promise((resolve) => {
    let text = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => (text += chunk)).once('end', () => resolve(text));
  });

describe('relay', () => {
  it('passes a half-close on, so a reply sent after the client finished still arrives', async () => {
    const client = await socketPair(); // client.near = app, client.far = proxy's accepted socket
    const origin = await socketPair(); // origin.near = proxy's onward socket, origin.far = origin
    const result = relay(client.far, origin.near);
    const atOrigin = collect(origin.far);
    const atClient = collect(client.near);

    client.near.end('request');
    expect(await atOrigin).toBe('request');
    origin.far.end('reply after the request ended');
    expect(await atClient).toBe('reply after the request ended');
    client.near.destroy();
    origin.far.destroy();
    await expect(result).resolves.toEqual({ fromClient: 7, toClient: 29 });
    client.close();
    origin.close();
  });

  it('tears both legs down when one of them is destroyed abruptly, and says so', async () => {
    const client = await socketPair();
    const origin = await socketPair();
    const result = relay(client.far, origin.near);
    const clientHungUp = new Promise((resolve) => client.near.once('end', resolve).once('error', resolve).resume());

    origin.near.destroy();

    const settled: RelayResult = await result;
    expect(settled.error).toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    expect(client.far.destroyed).toBe(true);
    await clientHungUp; // the app learns its connection is gone
    client.near.destroy();
    client.close();
    origin.close();
  });

  it('reports a leg error and destroys the other leg', async () => {
    const client = await socketPair();
    const origin = await socketPair();
    const result = relay(client.far, origin.near);
    origin.near.destroy(new Error('origin went away'));
    const settled = await result;
    expect(settled.error?.message).toBe('origin went away');
    expect(client.far.destroyed).toBe(true);
    client.near.destroy();
    origin.far.destroy();
    client.close();
    origin.close();
  });
});
