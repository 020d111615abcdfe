import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { connect } from '@coproxy/core';
import { pathReadings } from '../canonical-request.js';
import type { RequestInfo } from '../inspector.js';
import { createParser, isParserError } from '../node-http-parser.js';
import { type HttpProxy, createHttpProxy } from '../proxy.js';
import { type RequestCase, caseBytes } from './cases.js';
import { NGINX_DEFAULT_HOST, type RealOrigin, startNginx, startNodeOrigin } from './origins.js';

/**
 * The differential proof of issue #14: a request goes through a real coproxy-http to real
 * origins (Node's http.Server and nginx, each a process of its own), and for every request
 * the proxy forwards and an origin acts on, what the inspectors were given (method, host,
 * target, path readings, headers) must be what that origin parsed. A difference is a
 * `Divergence`: the rules judged one request and the origin served another.
 */

/** One field on which the inspectors' view and an origin's parse differ. */
export interface Divergence {
  readonly origin: 'node' | 'nginx';
  /** Which request on the connection (0 for the first). */
  readonly index: number;
  readonly field: string;
  readonly inspected: unknown;
  readonly parsed: unknown;
}

export interface CaseOutcome {
  /** Requests the proxy passed to the inspectors (and so forwarded), over both origins. */
  readonly inspected: number;
  /** Requests an origin acted on (answered with its echo). */
  readonly actedOn: { readonly node: number; readonly nginx: number };
  /** Responses to forwarded requests that were no echo (the origin refused, or the proxy failed the exchange). */
  readonly notActedOn: number;
  /** Those, by `origin:status` (the status the client got). */
  readonly notActedOnBy: Readonly<Record<string, number>>;
  readonly divergences: readonly Divergence[];
}

const CASE_TIMEOUT_MS = 10_000;
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade', 'transfer-encoding', 'content-length']);

/** Bytes a canonical path writes as themselves; as `canonical-request.ts` has them, plus '/'. */
const LITERAL = new Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/");

/** A decoded path (nginx's `$uri`, as bytes) in the canonical encoding the inspectors' readings use. */
export function encodeDecodedPath(bytes: Buffer): string {
  let text = '';
  for (const byte of bytes) {
    const c = String.fromCharCode(byte);
    text += LITERAL.has(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return text;
}

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Buffer;
}

export class Differential implements AsyncDisposable {
  /** What the inspector was given, per client connection (keyed by the client's port). */
  private readonly seen = new Map<number, RequestInfo[]>();

  private constructor(
    private readonly proxy: HttpProxy,
    private readonly registry: string,
    private readonly origins: readonly RealOrigin[],
  ) {}

  /** Starts both origins and a proxy (embedded backend, a registry of its own) that takes their ports. */
  static async start(): Promise<Differential> {
    const origins: RealOrigin[] = [];
    try {
      origins.push(await startNodeOrigin(), await startNginx());
      const registry = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-differential-'));
      const spy: { seen?: Map<number, RequestInfo[]> } = {};
      const proxy = createHttpProxy({
        id: `differential-${process.pid % 100000}`,
        priority: 1,
        registry,
        match: { ports: origins.map((o) => o.port) },
        headersTimeoutMs: 5000,
        inspectors: [
          {
            name: 'differential-spy',
            inspectRequest(request) {
              const list = spy.seen?.get(request.connection.source.port);
              list?.push(request);
              return undefined;
            },
          },
        ],
      });
      // Nothing subscribes to exchanges: the proxy serves as in production.
      await proxy.listening();
      const differential = new Differential(proxy, registry, origins);
      spy.seen = differential.seen;
      return differential;
    } catch (error) {
      for (const origin of origins) await origin[Symbol.asyncDispose]();
      throw error;
    }
  }

  /** Sends the case to each origin through the proxy, on a connection of its own, and compares. */
  async run(c: RequestCase): Promise<CaseOutcome> {
    const bytes = caseBytes(c);
    const divergences: Divergence[] = [];
    const actedOn = { node: 0, nginx: 0 };
    let inspected = 0;
    let notActedOn = 0;
    const notActedOnBy: Record<string, number> = {};
    for (const origin of this.origins) {
      const { seen, replies } = await this.exchange(origin.port, bytes);
      inspected += seen.length;
      for (let i = 0; i < seen.length; i++) {
        const reply = replies[i];
        const view = seen[i]!;
        if (reply === undefined || reply.headers['x-origin'] !== origin.name) {
          notActedOn++;
          const key = `${origin.name}:${reply?.status ?? 'none'}`;
          notActedOnBy[key] = (notActedOnBy[key] ?? 0) + 1;
          continue;
        }
        actedOn[origin.name]++;
        const found = origin.name === 'node' ? compareNode(view, reply) : compareNginx(view, reply);
        for (const d of found) divergences.push({ origin: origin.name, index: i, ...d });
      }
    }
    return { inspected, actedOn, notActedOn, notActedOnBy, divergences };
  }

  private async exchange(port: number, bytes: Buffer): Promise<{ seen: RequestInfo[]; replies: Reply[] }> {
    const socket = await connect({ host: '127.0.0.1', port, registry: this.registry, timeoutMs: CASE_TIMEOUT_MS });
    const key = socket.localPort!;
    const seen: RequestInfo[] = [];
    this.seen.set(key, seen);
    try {
      const received = await sendAndReadAll(socket, bytes);
      return { seen: [...seen], replies: parseReplies(received, seen) };
    } finally {
      this.seen.delete(key);
      socket.destroy();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.proxy.close();
    for (const origin of this.origins) await origin[Symbol.asyncDispose]();
    fs.rmSync(this.registry, { recursive: true, force: true });
  }
}

function sendAndReadAll(socket: net.Socket, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const done = (): void => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    };
    // A case that hangs gives what it got: the comparison sees a missing reply, never a wrong one.
    const timer = setTimeout(() => {
      socket.destroy();
      done();
    }, CASE_TIMEOUT_MS);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('close', done);
    socket.on('error', () => socket.destroy()); // a reset ends the case like a close
    socket.end(bytes);
  });
}

/** The responses on a connection, in order; `seen[i].method` says whether the i-th has a body. */
function parseReplies(received: Buffer, seen: readonly RequestInfo[]): Reply[] {
  const replies: Reply[] = [];
  let current: { status: number; headers: Record<string, string>; body: Buffer[] } | undefined;
  const parser = createParser('response', 64 * 1024, {
    onHead(head) {
      const headers: Record<string, string> = {};
      for (let i = 0; i < head.rawHeaders.length; i += 2) headers[head.rawHeaders[i]!.toLowerCase()] = head.rawHeaders[i + 1]!;
      current = { status: head.status, headers, body: [] };
      return seen[replies.length]?.method === 'HEAD';
    },
    onBody(chunk) {
      current?.body.push(Buffer.from(chunk));
    },
    onComplete() {
      if (current === undefined) return;
      if (current.status >= 200) replies.push({ status: current.status, headers: current.headers, body: Buffer.concat(current.body) });
      current = undefined;
    },
  });
  const consumed = parser.execute(received);
  if (!isParserError(consumed)) parser.finish();
  return replies;
}

type Found = Omit<Divergence, 'origin' | 'index'>;

function compareNode(view: RequestInfo, reply: Reply): Found[] {
  const echo = JSON.parse(Buffer.from(reply.headers['x-echo'] ?? '', 'base64').toString('utf8')) as {
    method: string;
    url: string;
    headers: Record<string, string | string[]>;
    whatwgPath: string | null;
  };
  const found: Found[] = [];
  const check = (field: string, inspected: unknown, parsed: unknown): void => {
    if (JSON.stringify(inspected) !== JSON.stringify(parsed)) found.push({ field, inspected, parsed });
  };
  check('method', view.method, echo.method);
  check('target', view.target, echo.url);
  check('host', view.authority, echo.headers.host);
  // An application that normalises req.url itself, as the standard says, gets the inspected path.
  check('path (RFC 3986 reading of req.url)', view.path, pathReadings(echo.url.split('?')[0]!)?.[0]);
  // One that reads it with WHATWG's URL (backslashes as slashes, %2e as dots) gets one of the inspected readings.
  if (echo.whatwgPath !== null) {
    const whatwg = pathReadings(echo.whatwgPath)?.[0];
    if (whatwg === undefined || !view.paths.includes(whatwg)) found.push({ field: 'path (WHATWG URL reading)', inspected: view.paths, parsed: echo.whatwgPath });
  }
  const named = new Set(String(view.headers.connection ?? '').split(',').map((t) => t.trim().toLowerCase()));
  const endToEnd = (headers: Record<string, unknown>): Record<string, unknown> =>
    Object.fromEntries(Object.entries(headers).filter(([name]) => !HOP_BY_HOP.has(name) && !named.has(name)).sort(([a], [b]) => (a < b ? -1 : 1)));
  check('headers', endToEnd(view.headers), endToEnd(echo.headers));
  return found;
}

function compareNginx(view: RequestInfo, reply: Reply): Found[] {
  const found: Found[] = [];
  const check = (field: string, inspected: unknown, parsed: unknown): void => {
    if (inspected !== parsed) found.push({ field, inspected, parsed });
  };
  check('method', view.method, reply.headers['x-method']);
  check('target', view.target, reply.headers['x-request-uri']);
  const host = view.host === undefined ? NGINX_DEFAULT_HOST : view.host.includes(':') ? `[${view.host}]` : view.host;
  check('host', host, reply.headers['x-host']);
  if (view.method !== 'HEAD') {
    const uri = encodeDecodedPath(reply.body);
    if (!view.paths.includes(uri)) found.push({ field: 'path (nginx $uri)', inspected: view.paths, parsed: uri });
  }
  return found;
}
