import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** A real origin server, in a process of its own, on 127.0.0.1. */
export interface RealOrigin extends AsyncDisposable {
  readonly name: 'node' | 'nginx';
  readonly port: number;
}

// From src/differential (the tests) and dist/differential (`pnpm fuzz`) alike: the aids are not built.
const FIXTURES = fileURLToPath(new URL('../../src/test-support/', import.meta.url));
const START_TIMEOUT_MS = 10_000;

/** Node's http.Server (src/test-support/reading-origin.mjs): echoes what it parsed in `X-Echo`. */
export async function startNodeOrigin(): Promise<RealOrigin> {
  const child = fork(path.join(FIXTURES, 'reading-origin.mjs'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the Node origin did not start')), START_TIMEOUT_MS);
    child.once('message', (message: { ready?: number }) => {
      clearTimeout(timer);
      if (typeof message.ready === 'number') resolve(message.ready);
      else reject(new Error(`unexpected message from the Node origin: ${JSON.stringify(message)}`));
    });
    child.once('exit', (code) => reject(new Error(`the Node origin exited with ${code}`)));
  });
  return { name: 'node', port, [Symbol.asyncDispose]: () => stop(child) };
}

/** Where Debian's nginx is, or undefined when it is not installed. */
export function nginxBinary(): string | undefined {
  for (const candidate of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx']) {
    if (fs.existsSync(candidate)) return candidate;
  }
  try {
    return execFileSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined; // not on PATH either: the caller says nginx is missing
  }
}

/** The server_name nginx gives `$host` when the request has no host of its own (an empty Host). */
export const NGINX_DEFAULT_HOST = 'default.invalid';

/**
 * nginx as a child process (`daemon off; master_process off;`), its configuration and
 * temporary files in a directory of its own, answering every request with
 * `$request_method`, `$host` and `$request_uri` in headers and its normalised `$uri` as the
 * body (which may hold any byte, even a decoded line break, so it is not a header).
 */
export async function startNginx(): Promise<RealOrigin> {
  const binary = nginxBinary();
  if (binary === undefined) throw new Error('nginx is not installed (Debian: apt-get install nginx-light)');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await startNginxOn(binary, port);
    } catch (error) {
      // Another process took the port between our probe and nginx's bind: try another.
      if (attempt >= 3) throw error;
    }
  }
}

async function startNginxOn(binary: string, port: number): Promise<RealOrigin> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-nginx-'));
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log crit;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  default_type text/plain;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:${port};
    server_name ${NGINX_DEFAULT_HOST};
    location / {
      add_header X-Origin nginx;
      add_header X-Method $request_method;
      add_header X-Host $host;
      add_header X-Request-Uri $request_uri;
      return 200 $uri;
    }
  }
}
`,
  );
  const child = spawn(binary, ['-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<never>((_resolve, reject) => child.once('exit', (code) => reject(new Error(`nginx exited with ${code}: ${stderr.trim()}`))));
  exited.catch(() => undefined); // observed below, and after a successful start nobody waits for it
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await nginxAnswers(port))) {
    if (Date.now() > deadline) {
      await stop(child);
      throw new Error(`nginx did not listen on ${port}: ${stderr.trim()}`);
    }
    await Promise.race([new Promise((resolve) => setTimeout(resolve, 50)), exited]);
  }
  return {
    name: 'nginx',
    port,
    async [Symbol.asyncDispose]() {
      await stop(child);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Whether nginx answers on `port`: a connection alone is not enough, since another process
 * may have been handed the port between freePort() and nginx's bind (nginx then exits with
 * EADDRINUSE, and the caller tries another port), and that process would accept too.
 */
function nginxAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get({ host: '127.0.0.1', port, path: '/', headers: { host: NGINX_DEFAULT_HOST }, agent: false }, (response) => {
      response.resume();
      resolve(response.headers['x-origin'] === 'nginx');
    });
    request.once('error', () => resolve(false));
    // Whatever else holds the port may never answer HTTP.
    request.setTimeout(2000, () => request.destroy());
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
