import { describe, expect, it } from 'vitest';
import { dial, readAll, readUntil, startProxy, startTcpOrigin, until } from './test-support/harness.js';
import { FRAME, PREFACE, frame, getBlock } from './test-support/h2.js';

/**
 * An origin that takes `Upgrade: h2c` when it is asked (101, then whatever comes is
 * HTTP/2), and otherwise answers 200. It records every byte it receives.
 */
async function startUpgradingOrigin(answer101Always = false): Promise<Awaited<ReturnType<typeof startTcpOrigin>> & { received: () => string }> {
  let received = Buffer.alloc(0);
  const origin = await startTcpOrigin((socket) => {
    let answered = false;
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (answered || !received.includes('\r\n\r\n')) return;
      answered = true;
      if (answer101Always || /^upgrade:\s*h2c/im.test(received.toString('latin1'))) {
        socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
      } else {
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok');
      }
    });
  });
  return Object.assign(origin, { received: () => received.toString('latin1') });
}

const UPGRADE_REQUEST = (port: number, path = '/'): string =>
  `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`;

describe('Upgrade: h2c', () => {
  it('is forwarded as a plain HTTP/1.1 request: the origin never sees the upgrade, and no HTTP/2 goes past the inspection', async () => {
    await using origin = await startUpgradingOrigin();
    await using under = await startProxy([origin.port]);
    const socket = await dial(under.registry, origin.port);
    try {
      socket.write(UPGRADE_REQUEST(origin.port));
      const answer = (await readUntil(socket, (bytes) => bytes.includes('\r\n\r\nok'))).toString('latin1');
      expect(answer).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      // A client that took the upgrade anyway writes HTTP/2 now: it must not reach the origin.
      socket.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0), frame(FRAME.HEADERS, 0x5, 1, getBlock('evil.test', '/admin'))]));
      await readAll(socket);
    } finally {
      socket.destroy();
    }
    const seen = origin.received();
    expect(seen).toMatch(/^GET \/ HTTP\/1\.1\r\n/);
    expect(seen).not.toMatch(/upgrade|http2-settings/i);
    expect(seen).not.toContain('PRI * HTTP/2.0');
    await until(() => under.exchanges.length === 1, 5000, 'the exchange');
    expect(under.exchanges[0]).toMatchObject({ kind: 'http', response: { status: 200 } });
  });

  it('answers 502 and opens no tunnel when an origin switches to h2c unasked', async () => {
    await using origin = await startUpgradingOrigin(true);
    await using under = await startProxy([origin.port]);
    const socket = await dial(under.registry, origin.port);
    let answer: string;
    try {
      socket.write(UPGRADE_REQUEST(origin.port));
      answer = (await readAll(socket)).toString('latin1');
    } finally {
      socket.destroy();
    }
    expect(answer).toMatch(/^HTTP\/1\.1 502 /);
    expect(answer).toContain('COPROXY_HTTP_ORIGIN_MALFORMED');
    expect(origin.received()).not.toMatch(/upgrade: h2c/i);
  });
});
