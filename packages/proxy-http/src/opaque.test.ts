import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type TcpOrigin, dial, readAll, readUntil, sha256, startProxy, startTcpOrigin, until } from './test-support/harness.js';

/** A raw TCP origin that echoes every byte and ends when the client does. */
function startEchoOrigin(): Promise<TcpOrigin> {
  return startTcpOrigin((socket) => socket.pipe(socket));
}

describe('non-HTTP connections', () => {
  it('relays a TLS-like binary stream byte for byte under the relay policy and reports it as opaque with its byte counts', async () => {
    await using origin = await startEchoOrigin();
    // The random bytes after the record header need not start a ClientHello: relayed as unrecognised bytes, when asked for.
    await using under = await startProxy([origin.port], { unrecognised: 'relay' });
    // 0x16 0x03 0x01: a TLS handshake record, then random bytes (which contain every byte value).
    const payload = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), randomBytes(3 * 1024 * 1024)]);
    const client = await dial(under.registry, origin.port);
    try {
      const reply = readAll(client);
      client.end(payload);
      const echoed = await reply;

      expect(echoed.length).toBe(payload.length);
      expect(sha256(echoed)).toBe(sha256(payload));
      await until(() => under.exchanges.length === 1, 5000, 'the opaque exchange');
      expect(under.exchanges[0]).toMatchObject({ kind: 'opaque', sequence: 1, tunnel: { bytesFromClient: payload.length, bytesToClient: payload.length } });
      expect(under.exchanges[0]?.error).toBeUndefined();
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'connection-kind', kind: 'opaque', connectionId: under.exchanges[0]?.connection.id }));
    } finally {
      client.destroy();
    }
  });

  it('passes a server-first protocol through once the client has been silent for sniffTimeoutMs, under the relay policy', async () => {
    const banner = '220 mail.origin.test ESMTP ready\r\n';
    await using origin = await startTcpOrigin((socket) => {
      socket.write(banner);
      socket.pipe(socket);
    });
    await using under = await startProxy([origin.port], { sniffTimeoutMs: 100, unrecognised: 'relay' });
    const client = await dial(under.registry, origin.port);
    try {
      // The client says nothing until the server has spoken.
      const greeting = await readUntil(client, (received) => received.includes('\r\n'));
      expect(greeting.toString()).toBe(banner);
      const rest = readAll(client);
      client.end('EHLO client.test\r\n');

      expect((await rest).toString()).toBe('EHLO client.test\r\n');
      await until(() => under.exchanges.length === 1, 5000, 'the opaque exchange');
      expect(under.exchanges[0]).toMatchObject({
        kind: 'opaque',
        tunnel: { bytesFromClient: 'EHLO client.test\r\n'.length, bytesToClient: banner.length + 'EHLO client.test\r\n'.length },
      });
    } finally {
      client.destroy();
    }
  });
});
