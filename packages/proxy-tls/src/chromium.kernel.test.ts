import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NETNS_V4, type Netns, assertKernelTestsCanRun, createNetns, skipKernelTests } from '@coproxy/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import type * as BuiltPackage from './index.js';
import { startCli, until, within } from './test-support/cli-process.js';

// Debian's Chromium, unmodified and headless, bumped for real: its HTTPS is redirected by
// the nftables backend to the coproxy-tls CLI (a bump policy and a CA dir), and it trusts
// the proxy's CA only through an NSS database made for the run (certutil), never through
// --ignore-certificate-errors. The page it loads (over HTTPS from an origin in the
// namespace, whose certificate comes from a CA the proxy is given as --origin-ca) runs a
// script that fetches JSON and writes it into the DOM, which --dump-dom prints.
//
// Every Chromium ClientHello carries an encrypted_client_hello extension (GREASE: it has
// no ECH config for the name): the test asserts the proxy saw it and bumped anyway.
//
// Needs chromium and certutil (apt-get install -y chromium libnss3-tools). Off CI, a
// developer without them may skip this file with COPROXY_SKIP_BROWSER_TESTS=1; under
// CI=true it always runs, and fails naming what is missing.

const run = promisify(execFile);
const testSupport = fileURLToPath(new URL('./test-support/', import.meta.url));
const built = new URL('../dist/index.js', import.meta.url).href;
const ID = 'acme-tls';
const PORT = 8443;
const NAME = 'page.test';
const PAGE_URL = `https://${NAME}:${PORT}/`;
const FETCH_URL = '/api/answer?from=script';

const skipBrowserTests = process.env.COPROXY_SKIP_BROWSER_TESTS === '1' && process.env.CI !== 'true';

async function assertBrowserTestsCanRun(): Promise<void> {
  await assertKernelTestsCanRun();
  const hint = 'the Chromium test needs chromium and certutil (apt-get install -y chromium libnss3-tools); set COPROXY_SKIP_BROWSER_TESTS=1 to skip it on a developer machine';
  for (const [command, args] of [['chromium', ['--version']], ['certutil', ['-H']]] as const) {
    try {
      await run(command, [...args]);
    } catch (error) {
      // certutil -H prints its help and exits 1: only a missing binary counts.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`'${command}' is not installed: ${hint}`, { cause: error });
    }
  }
}

function tempDir(): Disposable & { readonly path: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-chromium-'));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** What the page origin reports of each request (test-support/page-origin.mjs). */
interface OriginRequest {
  readonly method: string;
  readonly url: string;
  readonly from: string | undefined;
  readonly sni: string;
  readonly alpn: string | false;
}

async function startPageOrigin(netns: Netns, caDir: string): Promise<OriginRequest[]> {
  const received: OriginRequest[] = [];
  const child = netns.spawn(process.execPath, [path.join(testSupport, 'page-origin.mjs'), caDir, NETNS_V4, String(PORT)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; request?: OriginRequest }) => {
      if (message.request !== undefined) received.push(message.request);
      if (message.ready === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the page origin exited early with ${String(code)}`)));
  });
  await within(ready, 10_000, 'the page origin to listen');
  return received;
}

/** A HOME whose NSS database (where Chromium on Linux reads user-trusted roots) trusts `caPem` for TLS servers, or nothing. */
async function browserHome(dir: string, caPem: string | undefined): Promise<string> {
  const nssdb = path.join(dir, '.pki', 'nssdb');
  fs.mkdirSync(nssdb, { recursive: true });
  await run('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
  if (caPem !== undefined) await run('certutil', ['-d', `sql:${nssdb}`, '-A', '-t', 'C,,', '-n', 'coproxy-test', '-i', caPem]);
  return dir;
}

interface ChromiumResult {
  readonly dom: string;
  readonly stderr: string;
}

/**
 * Headless Chromium loads `url` in the namespace and prints the DOM once the page is
 * settled: --virtual-time-budget lets the script's fetch complete first. The name resolves
 * to the origin's address by a host-resolver rule; the connection itself is redirected by
 * the kernel like any program's. --no-sandbox because the test runs as root.
 */
async function chromium(netns: Netns, home: string, userDataDir: string, url: string): Promise<ChromiumResult> {
  const child = netns.spawn(
    'chromium',
    [
      ...['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      `--user-data-dir=${userDataDir}`,
      `--host-resolver-rules=MAP ${NAME} ${NETNS_V4}`,
      '--virtual-time-budget=10000',
      '--dump-dom',
      url,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOME: home } },
  );
  let dom = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (dom += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  try {
    await within(new Promise((resolve) => child.once('close', resolve)), 60_000, `chromium ${url}`);
  } finally {
    child.kill('SIGKILL'); // a no-op once it has exited; the namespace's disposal kills what it left
  }
  return { dom, stderr };
}

describe.skipIf(skipKernelTests || skipBrowserTests)('Chromium through coproxy-tls bump on the nftables backend, in a network namespace', () => {
  beforeAll(assertBrowserTestsCanRun);

  it('bumps an unmodified Chromium that trusts the proxy CA through NSS: the page and its script’s fetch are decrypted and logged', async () => {
    await using netns = await createNetns('chromium');
    using dir = tempDir();
    const originCaDir = path.join(dir.path, 'origin-ca');
    const proxyCaDir = path.join(dir.path, 'proxy-ca');
    const { CertificateAuthority } = (await import(built)) as typeof BuiltPackage;
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: 'CN=coproxy-tls chromium origin CA' })).certPath;
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ default: 'splice', rules: [{ name: 'inspect-page', when: { sni: NAME }, action: 'bump' }] }));
    const originReceived = await startPageOrigin(netns, originCaDir);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(PORT), '--backend', 'nftables', '--policy', policy],
      ...['--ca-dir', proxyCaDir, '--origin-ca', originCa],
    ]);
    await proxy.ready;
    const proxyCa = path.join(proxyCaDir, 'ca.crt');

    // (1) Trusting the proxy's CA through NSS, Chromium runs the page and its fetch.
    const trusted = await chromium(netns, await browserHome(path.join(dir.path, 'home'), proxyCa), path.join(dir.path, 'profile'), PAGE_URL);
    expect(trusted.dom, trusted.stderr).toContain('<p id="result">fetched: forty-two</p>');

    // Both requests reached the origin, over the proxy's own TLS sessions (HTTP/1.1: what bump speaks today).
    const page = originReceived.find((r) => r.url === '/');
    const fetched = originReceived.find((r) => r.url === FETCH_URL);
    expect(page).toMatchObject({ method: 'GET', sni: NAME, alpn: 'http/1.1' });
    expect(fetched).toMatchObject({ method: 'GET', from: 'page-script', sni: NAME, alpn: 'http/1.1' });

    // The proxy decrypted and logged both exchanges, on connections it bumped.
    await until(() => proxy.exchanges().some((x) => x.request.url === FETCH_URL), 5000, 'the fetch’s exchange in the log');
    const exchanges = proxy.exchanges();
    expect(exchanges).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ sni: NAME, request: expect.objectContaining({ method: 'GET', url: '/', host: `${NAME}:${PORT}` }) as unknown, response: expect.objectContaining({ status: 200 }) as unknown }),
        expect.objectContaining({ sni: NAME, request: expect.objectContaining({ method: 'GET', url: FETCH_URL }) as unknown, response: expect.objectContaining({ status: 200 }) as unknown }),
      ]),
    );
    const handshakes = proxy.handshakes();
    expect(handshakes.length).toBeGreaterThan(0);
    for (const handshake of handshakes) {
      // Chromium's hello: GREASE ECH (the outer name is the only name), h2 and http/1.1 offered; bumped by the rule, no note.
      expect(handshake).toMatchObject({ sni: NAME, ech: true, alpn: ['h2', 'http/1.1'], action: 'bump', rule: 'inspect-page', redirectedBy: [ID] });
      expect(handshake).not.toHaveProperty('note');
    }
    const bumpedConnections = new Set(handshakes.map((h) => h.connectionId));
    for (const exchange of exchanges) expect(bumpedConnections).toContain(exchange.connectionId);

    // (2) The same Chromium without the CA in its NSS database refuses the proxy's leaf:
    // the trust came from NSS, not from anything that ignores certificate errors.
    const before = originReceived.length;
    const untrusted = await chromium(netns, await browserHome(path.join(dir.path, 'home-untrusted'), undefined), path.join(dir.path, 'profile-untrusted'), PAGE_URL);
    expect(untrusted.stderr).toContain('net::ERR_CERT_AUTHORITY_INVALID');
    expect(untrusted.dom).not.toContain('fetched');
    expect(originReceived.length).toBe(before);

    expect(proxy.garbage).toEqual([]);
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 10_000, 'the CLI to exit after SIGTERM')).toEqual({ code: 0, signal: null });
  }, 120_000);
});
