import { describe, expect, it } from 'vitest';
import { dial, readAll, sleep, startProxy, startTcpOrigin } from './test-support/harness.js';

/**
 * Adversarial: the prior-knowledge preface sent in two pieces with a pause longer than the
 * sniff timeout between them. The sniff gives up on h2 and hands the bytes to the HTTP/1.1
 * parser; whatever it makes of `PRI * HTTP/2.0`, nothing may reach the origin uninspected.
 */
describe('h2c preface split across the sniff timeout', () => {
  it('relays nothing of a preface that stalls past sniffTimeoutMs, nor the frames after it', async () => {
    const received: Buffer[] = [];
    await using origin = await startTcpOrigin((socket) => {
      socket.on('data', (chunk: Buffer) => received.push(chunk));
      socket.on('error', () => undefined);
    });
    await using under = await startProxy([origin.port], { sniffTimeoutMs: 100, unrecognised: 'relay' });
    const socket = await dial(under.registry, origin.port);
    try {
      socket.write('PRI * HTTP/2.0\r\n\r\nSM\r\n');
      await sleep(400);
      // The rest of the preface, an empty SETTINGS, and an HTTP/1.1 request as a stand-in for anything.
      socket.write(Buffer.concat([Buffer.from('\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]), Buffer.from('GET /secret HTTP/1.1\r\nHost: x\r\n\r\n')]));
      await readAll(socket, 3000).catch(() => undefined);
    } finally {
      socket.destroy();
    }
    expect(Buffer.concat(received).toString('latin1')).toBe('');
  });
});
