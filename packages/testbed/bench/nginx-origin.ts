import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { stopProcess, waitUntil } from '@coproxy/bench-kit';
import { type Namespace, ORIGIN_ADDRESS } from './namespace.js';

export const SMALL_PATH = '/1k';
export const LARGE_PATH = '/64m';
export const SMALL_BYTES = 1024;
export const LARGE_BYTES = 64 * 1024 * 1024;
/** HTTPS with HTTP/2 offered by ALPN (and HTTP/1.1), for the h2 rows: a port of its own, so the HTTPS rows on 443 stay as they were. */
export const H2_PORT = 8443;

/** The origin's self-signed certificate, in the run's directory: what a bumping proxy must trust for the origin. */
export function originCertificate(dir: string): string {
  return path.join(dir, 'origin.crt');
}
/** nginx's stub_status, on a port no rule redirects. */
const STATUS_PORT = 8081;

export interface OriginCounts {
  readonly accepts: number;
  readonly requests: number;
}

export interface Origin {
  counts(): OriginCounts;
  stop(): Promise<void>;
}

/**
 * nginx from Debian as the origin, in the namespace: the 1 KiB and the 64 MiB file over
 * HTTP (port 80) and HTTPS (443, a self-signed certificate for 10.200.0.1 and
 * origin.test, made with openssl), HTTPS with HTTP/2 on {@link H2_PORT}, one worker (the machine has two cores, and the
 * proxies and wrk need them too), keep-alive without a request limit (nginx's default
 * closes a connection after 1000 requests, which would reach the proxies as reconnects).
 */
export async function startOrigin(ns: Namespace, dir: string): Promise<Origin> {
  const root = path.join(dir, 'www');
  fs.mkdirSync(root, { mode: 0o755 });
  fs.writeFileSync(path.join(root, SMALL_PATH.slice(1)), randomBytes(SMALL_BYTES), { mode: 0o644 });
  const large = fs.openSync(path.join(root, LARGE_PATH.slice(1)), 'w', 0o644);
  try {
    const chunk = randomBytes(1024 * 1024);
    for (let written = 0; written < LARGE_BYTES; written += chunk.length) fs.writeSync(large, chunk);
  } finally {
    fs.closeSync(large);
  }
  const key = path.join(dir, 'origin.key');
  const cert = originCertificate(dir);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=origin.test', '-addext', `subjectAltName=IP:${ORIGIN_ADDRESS},DNS:origin.test`],
    { stdio: 'ignore', timeout: 15_000 },
  );
  const temp = path.join(dir, 'nginx-temp');
  fs.mkdirSync(temp);
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(
    conf,
    `worker_processes 1;
daemon off;
pid ${path.join(dir, 'nginx.pid')};
error_log ${path.join(dir, 'nginx-error.log')} warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  default_type application/octet-stream;
  client_body_temp_path ${temp};
  proxy_temp_path ${temp};
  fastcgi_temp_path ${temp};
  uwsgi_temp_path ${temp};
  scgi_temp_path ${temp};
  server {
    listen ${ORIGIN_ADDRESS}:80;
    listen ${ORIGIN_ADDRESS}:443 ssl;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    root ${root};
  }
  server {
    # nginx 1.22: http2 is a listen parameter; ALPN offers h2 and http/1.1.
    listen ${ORIGIN_ADDRESS}:${H2_PORT} ssl http2;
    ssl_certificate ${cert};
    ssl_certificate_key ${key};
    root ${root};
  }
  server {
    listen 127.0.0.1:${STATUS_PORT};
    location / { stub_status; }
  }
}
`,
  );
  const log = path.join(dir, 'nginx.log');
  const child = ns.spawn('nginx', ['-c', conf], { output: { file: log } });
  const statusUrl = `http://127.0.0.1:${STATUS_PORT}/`;
  const status = (): string => ns.exec('curl', ['-sS', '--fail', '--max-time', '5', '--noproxy', '*', statusUrl]);
  try {
    await waitUntil('nginx', () => status().includes('server accepts handled requests'), 20_000, child);
  } catch (error) {
    throw new Error(`nginx did not start: ${(error as Error).message}: ${fs.existsSync(log) ? fs.readFileSync(log, 'utf8') : ''}`, { cause: error });
  }
  return {
    counts() {
      // "server accepts handled requests\n A H R": the status request itself is counted too, once per reading.
      const m = /\n\s*(\d+)\s+(\d+)\s+(\d+)/.exec(status());
      return { accepts: Number(m?.[1] ?? NaN), requests: Number(m?.[3] ?? NaN) };
    },
    stop: () => stopProcess(child, 5000, 'SIGQUIT'),
  };
}
