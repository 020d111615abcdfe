import { createAgent } from '@coproxy/core';
import type http from 'node:http';
import { describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { type HttpOrigin, startHttpOrigin, startProxy, startTcpOrigin, refusingPort, until, within } from './test-support/harness.js';

interface EchoOrigin extends HttpOrigin {
  /** The path of each handshake the origin accepted. */
  readonly handshakes: string[];
}

/** An HTTP origin with a `ws` server echoing every message, text as text and binary as binary. */
async function startWebSocketEcho(): Promise<EchoOrigin> {
  const handshakes: string[] = [];
  const origin = await startHttpOrigin((_req, res) => res.writeHead(426).end('websocket only\n'));
  const wss = new WebSocketServer({ server: origin.server });
  wss.on('connection', (socket, req) => {
    handshakes.push(req.url ?? '');
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  return {
    port: origin.port,
    server: origin.server,
    connections: origin.connections,
    handshakes,
    async [Symbol.asyncDispose]() {
      for (const client of wss.clients) client.terminate();
      await new Promise((resolve) => wss.close(resolve));
      await origin[Symbol.asyncDispose]();
    },
  };
}

function opened(socket: WebSocket): Promise<void> {
  return within(
    new Promise<void>((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    }),
    5000,
    'the WebSocket to open',
  );
}

function nextMessage(socket: WebSocket): Promise<{ data: Buffer; isBinary: boolean }> {
  return within(
    new Promise((resolve) => socket.once('message', (data: Buffer, isBinary: boolean) => resolve({ data, isBinary }))),
    5000,
    'a WebSocket message',
  );
}

function closed(socket: WebSocket): Promise<number> {
  return within(new Promise((resolve) => socket.once('close', (code: number) => resolve(code))), 5000, 'the WebSocket to close');
}

/** Ends a socket in any state; in CONNECTING, ws reports the termination itself as an error, which is expected here. */
function terminate(socket: WebSocket): void {
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.once('error', (error: Error) => {
      if (!error.message.includes('closed before the connection was established')) throw error;
    });
  }
  socket.terminate();
}

/** The response of a handshake that did not switch protocols. */
function unexpectedResponse(socket: WebSocket): Promise<{ status: number; body: string; authenticate: string | undefined }> {
  return within(
    new Promise((resolve, reject) => {
      socket.once('open', () => reject(new Error('the handshake succeeded')));
      socket.once('error', reject);
      socket.once('unexpected-response', (_req: http.ClientRequest, res: http.IncomingMessage) => {
        let body = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
        res.once('error', reject);
        res.once('end', () => resolve({ status: res.statusCode ?? 0, body, authenticate: res.headers['www-authenticate'] }));
      });
    }),
    5000,
    'the handshake to be refused',
  );
}

describe('WebSocket through the proxy', () => {
  it('echoes text and binary messages both ways and reports an upgrade exchange with its decision', async () => {
    await using origin = await startWebSocketEcho();
    await using under = await startProxy([origin.port]);
    const agent = createAgent({ registry: under.registry });
    const socket = new WebSocket(`ws://127.0.0.1:${origin.port}/chat?room=1`, { agent });
    try {
      await opened(socket);
      const replies = [];
      for (const message of ['hello', 'second message', 'x'.repeat(100_000)]) {
        const reply = nextMessage(socket);
        socket.send(message);
        replies.push(await reply);
      }
      const binary = Buffer.from([0x00, 0xff, 0x16, 0x03, 0x01, 0x80]);
      const binaryReply = nextMessage(socket);
      socket.send(binary);
      replies.push(await binaryReply);

      expect(replies.map((r) => [r.isBinary, r.data.toString('hex')])).toEqual([
        [false, Buffer.from('hello').toString('hex')],
        [false, Buffer.from('second message').toString('hex')],
        [false, Buffer.from('x'.repeat(100_000)).toString('hex')],
        [true, binary.toString('hex')],
      ]);
      expect(origin.handshakes).toEqual(['/chat?room=1']);

      const code = closed(socket);
      socket.close(1000, 'done');
      expect(await code).toBe(1000);
      await until(() => under.exchanges.length === 1, 5000, 'the upgrade exchange');
      const exchange = under.exchanges[0]!;
      expect(exchange).toMatchObject({
        kind: 'upgrade',
        sequence: 1,
        request: { method: 'GET', url: '/chat?room=1', headers: { upgrade: 'websocket' } },
        response: { status: 101 },
        decision: { action: 'allow' },
      });
      expect(exchange.error).toBeUndefined();
      // Frames are masked from the client and carry headers: more than the payloads, not less.
      expect(exchange.tunnel?.bytesFromClient).toBeGreaterThan(100_000 + 'hello'.length + 'second message'.length + binary.length);
      expect(exchange.tunnel?.bytesToClient).toBeGreaterThan(100_000 + 'hello'.length + 'second message'.length + binary.length);
    } finally {
      terminate(socket);
      agent.destroy();
    }
  });

  it("passes the origin's refusal of a handshake on to the client, body intact", async () => {
    // An origin with no WebSocket server answers the handshake as a plain request, here chunked.
    await using origin = await startHttpOrigin((_req, res) => {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer' });
      res.write('log in ');
      res.end('first');
    });
    await using under = await startProxy([origin.port]);
    const agent = createAgent({ registry: under.registry });
    const socket = new WebSocket(`ws://127.0.0.1:${origin.port}/private`, { agent });
    try {
      const refusal = await unexpectedResponse(socket);

      expect(refusal).toEqual({ status: 401, body: 'log in first', authenticate: 'Bearer' });
      await until(() => under.exchanges.length === 1, 5000, 'the declined upgrade exchange');
      expect(under.exchanges[0]).toMatchObject({ kind: 'upgrade', response: { status: 401 }, decision: { action: 'allow' } });
    } finally {
      terminate(socket);
      agent.destroy();
    }
  });

  it('refuses the handshake on a blocked path with the rule status, and never reaches the origin', async () => {
    await using origin = await startWebSocketEcho();
    await using under = await startProxy([origin.port], {
      rules: { rules: [{ name: 'no-admin-ws', when: { path: '/admin/*' }, verdict: 'block', status: 451, reason: 'not this socket' }] },
    });
    const agent = createAgent({ registry: under.registry });
    const socket = new WebSocket(`ws://127.0.0.1:${origin.port}/admin/feed`, { agent });
    try {
      const refusal = await unexpectedResponse(socket);

      expect(refusal).toEqual({ status: 451, body: 'not this socket\n', authenticate: undefined });
      expect(origin.handshakes).toEqual([]);
      expect(origin.connections).toHaveLength(0);
      await until(() => under.exchanges.length === 1, 5000, 'the refused upgrade exchange');
      expect(under.exchanges[0]).toMatchObject({
        kind: 'upgrade',
        request: { url: '/admin/feed' },
        response: { status: 451 },
        decision: { action: 'block', status: 451, by: ['rule:no-admin-ws'] },
      });

      // The same proxy still lets an allowed path through.
      const allowed = new WebSocket(`ws://127.0.0.1:${origin.port}/public`, { agent });
      try {
        await opened(allowed);
        const reply = nextMessage(allowed);
        allowed.send('still here');
        expect((await reply).data.toString()).toBe('still here');
      } finally {
        terminate(allowed);
      }
    } finally {
      terminate(socket);
      agent.destroy();
    }
  });

  it('answers a handshake whose origin is unreachable with 502 and an exchange-failed event', async () => {
    await using dead = await refusingPort();
    const deadPort = dead.port;
    await using under = await startProxy([deadPort]);
    const agent = createAgent({ registry: under.registry });
    const socket = new WebSocket(`ws://127.0.0.1:${deadPort}/chat`, { agent });
    try {
      const refusal = await unexpectedResponse(socket);

      expect(refusal.status).toBe(502);
      expect(refusal.body).toContain('ECONNREFUSED');
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'exchange-failed', code: 'ECONNREFUSED', status: 502 }));
      await until(() => under.exchanges.length === 1, 5000, 'the failed upgrade exchange');
      expect(under.exchanges[0]).toMatchObject({ kind: 'upgrade', response: { status: 502 }, error: { code: 'ECONNREFUSED' } });
    } finally {
      terminate(socket);
      agent.destroy();
    }
  });

  it('answers a handshake the origin never answers with 504 COPROXY_HTTP_ORIGIN_TIMEOUT after originTimeoutMs', async () => {
    await using silent = await startTcpOrigin((socket) => socket.resume());
    await using under = await startProxy([silent.port], { originTimeoutMs: 300 });
    const agent = createAgent({ registry: under.registry });
    const socket = new WebSocket(`ws://127.0.0.1:${silent.port}/chat`, { agent });
    try {
      const refusal = await unexpectedResponse(socket);

      expect(refusal.status).toBe(504);
      expect(refusal.body).toContain('no response from the origin within 300 ms');
      expect(under.events).toContainEqual(expect.objectContaining({ type: 'exchange-failed', code: 'COPROXY_HTTP_ORIGIN_TIMEOUT', status: 504 }));
      await until(() => under.exchanges.length === 1, 5000, 'the failed upgrade exchange');
      expect(under.exchanges[0]).toMatchObject({ kind: 'upgrade', response: { status: 504 }, error: { code: 'COPROXY_HTTP_ORIGIN_TIMEOUT' } });
      await until(() => silent.sockets[0]?.destroyed === true, 5000, 'the onward connection to close');
    } finally {
      terminate(socket);
      agent.destroy();
    }
  });
});
