import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import path from 'node:path';
import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { type TlsOrigin, startProxy, startTlsOrigin, tempDir, testCa, tlsClient, within } from './test-support/harness.js';
import { h2Client } from './test-support/h2-support.js';

/**
 * Trailers through bump, each way, whatever each leg speaks: gRPC's `grpc-status` from an
 * h2 origin to an h2 client, an HTTP/1.1 origin's chunked trailers to an h2 client (and an
 * h2 origin's to an HTTP/1.1 client), and a client's request trailers to the origin.
 */

const RESPONSE_TRAILERS = { 'grpc-status': '0', 'grpc-message': 'ok' };

/** An origin speaking `protocol` that answers with `RESPONSE_TRAILERS` after its body and records the request trailers it got. */
async function trailerOrigin(ca: Parameters<typeof startTlsOrigin>[0]['ca'], protocol: 'h2' | 'http/1.1'): Promise<TlsOrigin & { readonly requestTrailers: Record<string, unknown>[] }> {
  const requestTrailers: Record<string, unknown>[] = [];
  const h1 = http.createServer((req, res) => {
    req.resume();
    req.once('end', () => {
      if (Object.keys(req.trailers).length > 0) requestTrailers.push(req.trailers);
      // No Content-Length: chunked, which has room for trailers.
      res.writeHead(200, { 'content-type': 'application/grpc', trailer: 'grpc-status, grpc-message' });
      res.addTrailers(RESPONSE_TRAILERS);
      res.end('body');
    });
  });
  const origin = await startTlsOrigin({
    ca,
    ALPNProtocols: [protocol],
    onSession: (socket: tls.TLSSocket) => {
      if (protocol === 'http/1.1') return void h1.emit('connection', socket);
      const session = http2.performServerHandshake(socket);
      session.on('error', () => undefined);
      session.on('stream', (stream) => {
        stream.on('error', () => undefined);
        stream.once('trailers', (t: Record<string, unknown>) => requestTrailers.push(t));
        stream.resume();
        stream.once('end', () => {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
          stream.once('wantTrailers', () => stream.sendTrailers(RESPONSE_TRAILERS));
          stream.end('body');
        });
      });
    },
  });
  return Object.assign(origin, { requestTrailers });
}

async function scene(protocol: 'h2' | 'http/1.1') {
  const originCa = await testCa('CN=trailers origin CA');
  const origin = await trailerOrigin(originCa, protocol);
  const caDir = tempDir('coproxy-tls-proxy-ca-');
  const proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
  const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
  return {
    origin,
    proxy,
    proxyCa,
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      await origin[Symbol.asyncDispose]();
      caDir[Symbol.dispose]();
      originCa[Symbol.dispose]();
    },
  };
}

/** A POST over h2 through the proxy, with request trailers; the response's body and trailers. */
async function h2Post(s: Awaited<ReturnType<typeof scene>>): Promise<{ body: string; trailers: Record<string, unknown> | undefined }> {
  await using client = await h2Client(s.proxy.registry, s.origin.port, 'grpc.example', s.proxyCa);
  const stream = client.session.request({ ':method': 'POST', ':path': '/pkg.Service/Call', ':authority': 'grpc.example', ':scheme': 'https', 'content-type': 'application/grpc', te: 'trailers' }, { waitForTrailers: true });
  stream.once('wantTrailers', () => stream.sendTrailers({ 'x-checksum': 'abc123' }));
  let trailers: Record<string, unknown> | undefined;
  stream.once('trailers', (t: Record<string, unknown>) => (trailers = t));
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  const ended = new Promise<void>((resolve, reject) => stream.once('end', resolve).once('error', reject));
  stream.end('request');
  await within(ended, 10_000, 'the response');
  return { body: Buffer.concat(chunks).toString(), trailers };
}

describe('bump passes trailers on, both ways', () => {
  it.each(['h2', 'http/1.1'] as const)('h2 client, %s origin: the response’s trailers reach the client, the request’s are not forwarded (they follow the verdict)', async (protocol) => {
    await using s = await scene(protocol);
    const answer = await h2Post(s);
    expect(answer.body).toBe('body');
    expect(answer.trailers).toMatchObject(RESPONSE_TRAILERS);
    expect(s.origin.requestTrailers.some((fields) => 'x-checksum' in fields)).toBe(false);
    expect(s.proxy.exchanges).toEqual([expect.objectContaining({ protocols: { client: 'h2', origin: protocol }, response: expect.objectContaining({ status: 200 }) as unknown })]);
  });

  it('HTTP/1.1 client, h2 origin: chunked request trailers are not forwarded, the origin’s trailers follow the last chunk', async () => {
    await using s = await scene('h2');
    const { socket } = await tlsClient(s.proxy.registry, s.origin.port, { servername: 'grpc.example', ca: s.proxyCa, ALPNProtocols: ['http/1.1'] });
    socket.write('POST /pkg.Service/Call HTTP/1.1\r\nHost: grpc.example\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nConnection: close\r\n\r\n7\r\nrequest\r\n0\r\nX-Checksum: abc123\r\n\r\n');
    const text = await within(
      new Promise<string>((resolve) => {
        let received = '';
        socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
        socket.once('close', () => resolve(received));
      }),
      10_000,
      'the response',
    );
    expect(text.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
    expect(text.toLowerCase()).toMatch(/\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n$/);
    expect(s.origin.requestTrailers.some((fields) => 'x-checksum' in fields)).toBe(false);
  });
});
