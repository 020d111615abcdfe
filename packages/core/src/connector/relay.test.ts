import { createHash, randomBytes } from 'node:crypto';
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

/** Both legs of a relay (app ↔ proxy, proxy ↔ origin); disposing destroys every socket and closes both servers. */
async function relayLegs(): Promise<{ client: Awaited<ReturnType<typeof socketPair>>; origin: Awaited<ReturnType<typeof socketPair>> } & Disposable> {
  const client = await socketPair(); // client.near = app, client.far = the proxy's accepted socket
  const origin = await socketPair(); // origin.near = the proxy's onward socket, origin.far = origin
  return {
    client,
    origin,
    [Symbol.dispose]() {
      for (const socket of [client.near, client.far, origin.near, origin.far]) socket.destroy();
      client.close();
      origin.close();
    },
  };
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

  it('carries 24 MiB each way at once, intact and in order, to a reader that keeps stopping', async () => {
    using legs = await relayLegs();
    const { client, origin } = legs;
    const result = relay(client.far, origin.near);
    const up = randomBytes(24 * 1024 * 1024);
    const down = randomBytes(24 * 1024 * 1024);
    const atOrigin = digestOf(origin.far);
    // The client reads in fits and starts: the relay's writes towards it queue, and it
    // must stop reading the origin until each queued write is done (the buffer is reused).
    const atClient = digestOf(client.near, { stopEvery: 256 * 1024, stopForMs: 5 });

    writeInChunks(client.near, up);
    writeInChunks(origin.far, down);

    expect(await atOrigin).toEqual({ bytes: up.length, sha256: sha256(up) });
    expect(await atClient).toEqual({ bytes: down.length, sha256: sha256(down) });
    client.near.destroy();
    origin.far.destroy();
    await expect(result).resolves.toEqual({ fromClient: up.length, toClient: down.length });
  });

  it('relays bytes a socket had already buffered before the relay began, then the rest', async () => {
    using legs = await relayLegs();
    const { client, origin } = legs;
    client.near.write('buffered first, ');
    // Read into the stream's own buffer and left there, as a proxy that peeked would.
    await new Promise<void>((resolve) => client.far.once('readable', () => resolve()));
    expect(client.far.readableLength).toBeGreaterThan(0);
    const result = relay(client.far, origin.near);
    const atOrigin = collect(origin.far);

    client.near.end('then the rest');
    expect(await atOrigin).toBe('buffered first, then the rest');
    origin.far.end();
    client.near.resume();
    await result;
  });

  it('passes on a FIN that came before the relay began', async () => {
    using legs = await relayLegs();
    const { client, origin } = legs;
    // A proxy peeking at the first bytes, which were all the client sent, FIN included.
    const peeked = new Promise((resolve) => client.far.on('data', () => undefined).once('end', resolve));
    client.near.end('all at once');
    await peeked;
    client.far.removeAllListeners('data');
    const result = relay(client.far, origin.near);
    const originSawEnd = new Promise((resolve) => origin.far.once('end', resolve).resume());

    await originSawEnd;
    origin.far.end('reply');
    expect(await collect(client.near)).toBe('reply');
    await result;
  });

  it("leaves a caller's own 'data' listener its data", async () => {
    using legs = await relayLegs();
    const { client, origin } = legs;
    const seen: string[] = [];
    client.far.on('data', (chunk: Buffer) => seen.push(chunk.toString()));
    const result = relay(client.far, origin.near);
    const atOrigin = collect(origin.far);

    client.near.end('watched');
    expect(await atOrigin).toBe('watched');
    expect(seen.join('')).toBe('watched');
    origin.far.end();
    client.near.resume();
    await result;
  });
});

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

function writeInChunks(socket: net.Socket, data: Buffer): void {
  const chunk = 100_000; // not a multiple of the relay's read size
  let offset = 0;
  const pump = (): void => {
    while (offset < data.length) {
      const piece = data.subarray(offset, offset + chunk);
      offset += piece.length;
      if (!socket.write(piece)) return void socket.once('drain', pump);
    }
    socket.end();
  };
  pump();
}

function digestOf(socket: net.Socket, pauses?: { stopEvery: number; stopForMs: number }): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let sinceStop = 0;
    socket.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      sinceStop += chunk.length;
      if (pauses !== undefined && sinceStop >= pauses.stopEvery) {
        sinceStop = 0;
        socket.pause();
        setTimeout(() => socket.resume(), pauses.stopForMs);
      }
    });
    socket.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    socket.once('error', reject);
  });
}
