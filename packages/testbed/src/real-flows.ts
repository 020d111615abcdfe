import { prng } from './flows.js';

/** The clients of the real-client scenarios: unmodified programs, redirected by the kernel. */
export type RealClient = 'curl' | 'python-urllib' | 'chromium';

/** One flow: one client program run, one connection, one request. Its port is its tag, as in every testbed run. */
export interface RealFlow {
  readonly index: number;
  readonly client: RealClient;
  readonly scheme: 'http' | 'https';
  readonly method: 'GET' | 'POST';
  /** `/data/<KiB>` or `/echo`. */
  readonly path: string;
  /** POST: the body's size. */
  readonly uploadBytes: number;
  readonly port: number;
}

/** The name the origin's certificate is for; the namespace's /etc/hosts maps it to the origin. */
export const ORIGIN_NAME = 'origin.test';

/** The flows, before ports: each client over HTTP and HTTPS, downloads and uploads, small and a few MiB. */
export const REAL_FLOWS: readonly Omit<RealFlow, 'index' | 'port'>[] = [
  { client: 'curl', scheme: 'http', method: 'GET', path: '/data/300', uploadBytes: 0 },
  { client: 'curl', scheme: 'https', method: 'POST', path: '/echo', uploadBytes: 1024 * 1024 },
  { client: 'curl', scheme: 'https', method: 'GET', path: '/data/2048', uploadBytes: 0 },
  { client: 'python-urllib', scheme: 'http', method: 'POST', path: '/echo', uploadBytes: 512 * 1024 },
  { client: 'python-urllib', scheme: 'https', method: 'GET', path: '/data/700', uploadBytes: 0 },
  { client: 'python-urllib', scheme: 'https', method: 'POST', path: '/echo', uploadBytes: 3 * 1024 * 1024 },
  // A page whose script fetches 256 KiB and echoes 64 KiB over a WebSocket (PAGE, APP_SCRIPT).
  { client: 'chromium', scheme: 'http', method: 'GET', path: '/', uploadBytes: 0 },
  { client: 'chromium', scheme: 'https', method: 'GET', path: '/', uploadBytes: 0 },
];

/** Chromium's page: the script runs after parsing, writes what it got into #result and posts it to /result. */
export const PAGE = '<!doctype html><html><head><title>coproxy real client</title><script src="/app.js" defer></script></head><body><pre id="result">pending</pre></body></html>\n';

/**
 * The page's script: fetch, then a WebSocket echo; a checksum of each answer (FNV-1a: plain
 * HTTP is not a secure context, so there is no crypto.subtle) goes into the page.
 */
export const APP_SCRIPT = `
const fnv = (bytes) => { let h = 0x811c9dc5; for (const b of bytes) { h ^= b; h = Math.imul(h, 0x01000193) >>> 0; } return h.toString(16); };
(async () => {
  const out = {};
  try {
    const data = new Uint8Array(await (await fetch('/data/256')).arrayBuffer());
    out.fetch = { bytes: data.length, fnv: fnv(data) };
    const message = new Uint8Array(64 * 1024);
    for (let i = 0; i < message.length; i++) message[i] = (i * 31 + 7) & 255;
    const echoed = await new Promise((resolve, reject) => {
      const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => ws.send(message);
      ws.onmessage = (event) => { resolve(new Uint8Array(event.data)); ws.close(); };
      ws.onerror = () => reject(new Error('websocket error'));
    });
    out.websocket = { bytes: echoed.length, fnv: fnv(echoed), echoedIntact: fnv(echoed) === fnv(message) };
  } catch (error) {
    out.error = String(error);
  }
  document.getElementById('result').textContent = JSON.stringify(out);
  await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
})();
`;

/** `GET /data/<kib>`'s answer: the same bytes for the same size, in every run. */
export function dataBytes(kib: number): Buffer {
  const bytes = Buffer.alloc(kib * 1024);
  const random = prng(kib);
  for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE(Math.floor(random() * 2 ** 32), i);
  return bytes;
}

/** What a flow uploads: derived from its index and size. */
export function uploadBytes(flow: Pick<RealFlow, 'index' | 'uploadBytes'>): Buffer {
  const bytes = Buffer.alloc(flow.uploadBytes);
  const random = prng(0xb0d1 + flow.index);
  for (let i = 0; i + 4 <= bytes.length; i += 4) bytes.writeUInt32LE(Math.floor(random() * 2 ** 32), i);
  return bytes;
}

export interface RealOriginRequest {
  readonly port: number;
  readonly method: string;
  readonly url: string;
  /** SHA-256 of the request line and header lines as received. */
  readonly head: string;
  readonly body: string;
  readonly bodyBytes: number;
}

export type RealOriginMessage =
  | { readonly ready: true; readonly caCert: string }
  | { readonly requests: RealOriginRequest[] }
  /** A page's script posted its result (Chromium flows). */
  | { readonly page: { readonly port: number; readonly text: string } };
