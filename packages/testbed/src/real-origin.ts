/**
 * The origin of the real-client scenarios (real-clients.ts): one HTTP or HTTPS listener per
 * flow, in the run's network namespace. `GET /data/<KiB>` answers that many KiB of bytes
 * derived from the size; `POST /echo` answers the body. It hashes what each request brought
 * (its header lines as sent, and its body) and reports over IPC on request.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { CertificateAuthority } from '@coproxy/proxy-tls';
import { WebSocketServer } from 'ws';
import { APP_SCRIPT, PAGE, dataBytes } from './real-flows.js';
import type { RealFlow, RealOriginMessage, RealOriginRequest } from './real-flows.js';

interface Args {
  readonly host: string;
  readonly flows: readonly RealFlow[];
  readonly caDir: string;
}

const args = JSON.parse(fs.readFileSync(process.argv[2] ?? '', 'utf8')) as Args;
const send = (message: RealOriginMessage): void => void process.send?.(message);
const requests: RealOriginRequest[] = [];
const MAX_BODY = 16 * 1024 * 1024;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'upgrade']);

function handler(port: number) {
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const body: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) return void req.destroy();
      body.push(chunk);
    });
    req.on('end', () => {
      const bytes = Buffer.concat(body);
      // The header lines in the order and case they came: what the client sent, less the
      // hop-by-hop ones a proxy may rewrite (RFC 9110 7.6.1; coproxy-http drops Chromium's
      // `Connection: keep-alive`, the HTTP/1.1 default).
      const lines: string[] = [];
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        if (!HOP_BY_HOP.has(req.rawHeaders[i]!.toLowerCase())) lines.push(`${req.rawHeaders[i]!}: ${req.rawHeaders[i + 1]!}`);
      }
      const head = `${req.method ?? ''} ${req.url ?? ''} HTTP/${req.httpVersion}\n${lines.join('\n')}`;
      requests.push({ port, method: req.method ?? '', url: req.url ?? '', head: sha256(head), body: sha256(bytes), bodyBytes: bytes.length });
      const data = /^\/data\/(\d{1,5})$/.exec(req.url ?? '');
      if (req.method === 'GET' && req.url === '/') return void res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
      if (req.method === 'POST' && req.url === '/result') {
        send({ page: { port, text: bytes.toString('utf8') } });
        return void res.writeHead(204).end();
      }
      if (req.method === 'GET' && req.url === '/app.js') return void res.writeHead(200, { 'content-type': 'text/javascript' }).end(APP_SCRIPT);
      const answer = req.method === 'POST' && req.url === '/echo' ? bytes : req.method === 'GET' && data !== null ? dataBytes(Number(data[1])) : undefined;
      if (answer === undefined) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': answer.length }).end(answer);
    });
  };
}

const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex');

async function main(): Promise<void> {
  const ca = await CertificateAuthority.open({ dir: args.caDir });
  for (const flow of args.flows) {
    const server =
      flow.scheme === 'http'
        ? http.createServer(handler(flow.port))
        : https.createServer({ SNICallback: (name, done) => void ca.contextFor(name).then((context) => done(null, context), (error: Error) => done(error)) }, handler(flow.port));
    // WebSocket echo on /ws (the page's script): each message comes back as it came.
    const sockets = new WebSocketServer({ server, path: '/ws', maxPayload: 1024 * 1024 });
    sockets.on('connection', (socket, req) => {
      socket.on('message', (message: Buffer, isBinary) => {
        requests.push({ port: flow.port, method: 'WS', url: req.url ?? '', head: '', body: sha256(message), bodyBytes: message.length });
        socket.send(message, { binary: isBinary });
      });
      socket.on('error', () => socket.terminate());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(flow.port, args.host, resolve);
    });
  }
  process.on('message', (message) => {
    if (message === 'report') send({ requests });
  });
  process.on('disconnect', () => process.exit(0));
  send({ ready: true, caCert: ca.certPath });
}

main().catch((error: unknown) => {
  process.stderr.write(`testbed real origin: ${String(error)}\n`);
  process.exit(1);
});
