import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { NETNS_V4, type Netns, assertKernelTestsCanRun, createNetns, skipKernelTests } from '@coproxy/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import type * as BuiltPackage from './index.js';
import { type ChromiumRun, browserHome, runChromium, startReporter } from './test-support/browser.js';
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
const built = new URL('../dist/index.js', import.meta.url).href;
const ID = 'acme-tls';
const PORT = 8443;
const NAME = 'page.test';
const PAGE_URL = `https://${NAME}:${PORT}/`;
const FETCH_URL = '/api/answer?from=script';
/** The page's second fetch, which the first test's rule file blocks. */
const SECRET_URL = '/api/secret?from=script';
/** The real-ECH test: the name visited, and the ECH config's public name (the outer SNI). */
const SECRET_NAME = 'secret.test';
const PUBLIC_NAME = 'public.test';

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
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }) };
}

/** What the page origin reports of each request (test-support/page-origin.mjs). */
interface OriginRequest {
  readonly method: string;
  readonly url: string;
  readonly from: string | undefined;
  readonly sni: string;
  readonly alpn: string | false;
}

/** What the DNS server reports of each query (test-support/ech-dns.mjs). */
interface DnsQuery {
  readonly name: string;
  readonly type: number;
}

const startPageOrigin = (netns: Netns, caDir: string): Promise<OriginRequest[]> =>
  startReporter(netns, 'page-origin.mjs', [caDir, NETNS_V4, String(PORT)], (message) => message.request as OriginRequest | undefined);

/**
 * Files that `ip netns exec` bind-mounts over /etc for what it starts in `netns`
 * (ip-netns(8)): how the namespace gets a resolver of its own. Removed on dispose.
 */
function netnsEtc(netns: Netns, files: Readonly<Record<string, string>>): Disposable {
  const dir = path.join('/etc/netns', netns.name);
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), content);
  return { [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }) };
}

/**
 * Headless Chromium loads `url` in the namespace and prints the DOM once the page is
 * settled. The name resolves to the origin's address by a host-resolver rule, or (`dns`)
 * through the namespace's resolv.conf; the connection itself is redirected by the kernel
 * like any program's.
 */
function chromium(netns: Netns, home: string, userDataDir: string, url: string, resolve: 'rule' | 'dns' = 'rule'): Promise<ChromiumRun> {
  return runChromium(netns, home, userDataDir, url, resolve === 'rule' ? [`--host-resolver-rules=MAP ${NAME} ${NETNS_V4}`] : []);
}

describe.skipIf(skipKernelTests || skipBrowserTests)('Chromium through coproxy-tls bump on the nftables backend, in a network namespace', () => {
  beforeAll(assertBrowserTestsCanRun);

  it('bumps an unmodified Chromium that trusts the proxy CA through NSS: over h2 on both legs, the page and its script’s fetches are decrypted and logged, and the fetch a --rules rule blocks gets the rule’s status on its own stream', async () => {
    await using netns = await createNetns('chromium');
    using dir = tempDir();
    const originCaDir = path.join(dir.path, 'origin-ca');
    const proxyCaDir = path.join(dir.path, 'proxy-ca');
    const { CertificateAuthority } = (await import(built)) as typeof BuiltPackage;
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: 'CN=coproxy-tls chromium origin CA' })).certPath;
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ default: 'splice', rules: [{ name: 'inspect-page', when: { sni: NAME }, action: 'bump' }] }));
    // coproxy-http's rule format: the script's second fetch is blocked on its own stream.
    const rules = path.join(dir.path, 'rules.json');
    fs.writeFileSync(rules, JSON.stringify({ rules: [{ name: 'no-secret', when: { host: NAME, path: '/api/secret' }, verdict: 'block', status: 451, reason: 'no secrets here' }] }));
    const originReceived = await startPageOrigin(netns, originCaDir);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(PORT), '--backend', 'nftables', '--policy', policy, '--rules', rules],
      ...['--ca-dir', proxyCaDir, '--origin-ca', originCa],
    ]);
    await proxy.ready;
    const proxyCa = path.join(proxyCaDir, 'ca.crt');

    // (1) Trusting the proxy's CA through NSS, Chromium runs the page and its fetches: the
    // allowed one loads, the blocked one gets the rule's status and reason on its own stream.
    const trusted = await chromium(netns, await browserHome(path.join(dir.path, 'home'), proxyCa), path.join(dir.path, 'profile'), PAGE_URL);
    expect(trusted.dom, trusted.stderr).toContain('<p id="result">fetched: forty-two</p>');
    expect(trusted.dom, trusted.stderr).toContain('<p id="secret">secret: 451 no secrets here</p>');
    expect(originReceived.map((r) => r.url)).not.toContain(SECRET_URL);

    // Both requests reached the origin over the proxy's own TLS sessions, as h2: the origin offers it.
    const page = originReceived.find((r) => r.url === '/');
    const fetched = originReceived.find((r) => r.url === FETCH_URL);
    expect(page).toMatchObject({ method: 'GET', sni: NAME, alpn: 'h2' });
    expect(fetched).toMatchObject({ method: 'GET', from: 'page-script', sni: NAME, alpn: 'h2' });

    // The proxy decrypted and logged both exchanges, on connections it bumped.
    await until(() => proxy.exchanges().some((x) => x.request.url === FETCH_URL), 5000, 'the fetch’s exchange in the log');
    await until(() => proxy.exchanges().some((x) => x.request.url === SECRET_URL), 5000, 'the blocked fetch’s exchange in the log');
    const exchanges = proxy.exchanges();
    expect(exchanges).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ sni: NAME, protocols: { client: 'h2', origin: 'h2' }, request: expect.objectContaining({ method: 'GET', url: '/', host: `${NAME}:${PORT}` }) as unknown, response: expect.objectContaining({ status: 200 }) as unknown }),
        expect.objectContaining({ sni: NAME, protocols: { client: 'h2', origin: 'h2' }, request: expect.objectContaining({ method: 'GET', url: FETCH_URL }) as unknown, response: expect.objectContaining({ status: 200 }) as unknown }),
        expect.objectContaining({
          sni: NAME,
          protocols: { client: 'h2', origin: 'h2' },
          request: expect.objectContaining({ method: 'GET', url: SECRET_URL }) as unknown,
          decision: { action: 'block', status: 451, reason: 'no secrets here', by: ['rule:no-secret'] },
          response: expect.objectContaining({ status: 451 }) as unknown,
        }),
      ]),
    );
    // The two fetches were streams of one h2 connection: the block ended one stream, not the connection.
    const allowedFetch = exchanges.find((x) => x.request.url === FETCH_URL)!;
    const blockedFetch = exchanges.find((x) => x.request.url === SECRET_URL)!;
    expect(blockedFetch.connectionId).toBe(allowedFetch.connectionId);
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
    expect(await within(proxy.exited, 30_000, 'the CLI to exit after SIGTERM')).toEqual({ code: 0, signal: null });
  }, 240_000);

  it('makes a Chromium that really uses ECH fall back to its real name: bump on the public name is an ECH rejection, and nothing is sent under it', async () => {
    await using netns = await createNetns('chromium-ech');
    // Chromium's own DNS client (it asks for HTTPS records, where ECH configs come from)
    // reads these; nsswitch.conf without mdns, or it would leave DNS to the system.
    using _etc = netnsEtc(netns, { 'resolv.conf': `nameserver ${NETNS_V4}\n`, 'nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files dns\n' });
    using dir = tempDir();
    const originCaDir = path.join(dir.path, 'origin-ca');
    const proxyCaDir = path.join(dir.path, 'proxy-ca');
    const { CertificateAuthority } = (await import(built)) as typeof BuiltPackage;
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: 'CN=coproxy-tls chromium origin CA' })).certPath;
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(
      policy,
      JSON.stringify({
        default: 'splice',
        rules: [
          { name: 'inspect-public', when: { sni: PUBLIC_NAME }, action: 'bump' },
          { name: 'inspect-secret', when: { sni: SECRET_NAME }, action: 'bump' },
        ],
      }),
    );
    const queries = await startReporter(netns, 'ech-dns.mjs', [NETNS_V4, NETNS_V4, SECRET_NAME, PUBLIC_NAME], (message) => message.query as DnsQuery | undefined);
    const originReceived = await startPageOrigin(netns, originCaDir);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(PORT), '--backend', 'nftables', '--policy', policy],
      ...['--ca-dir', proxyCaDir, '--origin-ca', originCa],
    ]);
    await proxy.ready;
    const home = await browserHome(path.join(dir.path, 'home'), path.join(proxyCaDir, 'ca.crt'));

    const result = await chromium(netns, home, path.join(dir.path, 'profile'), `https://${SECRET_NAME}:${PORT}/`, 'dns');

    // Chromium got the ECH config (RFC 9460's port-prefixed name for port 8443)…
    expect(queries).toContainEqual({ name: `_${PORT}._https.${SECRET_NAME}`, type: 65 });
    // …and sent ECH: the outer hello named only the public name. Bump answered for that
    // name; Chromium took it as ECH rejected (ERR_ECH_NOT_NEGOTIATED, net error -183) and
    // retried without ECH, its real name in the clear, and that was bumped and inspected.
    expect(result.stderr).toContain('net_error -183');
    expect(result.dom, result.stderr).toContain('<p id="result">fetched: forty-two</p>');
    await until(() => proxy.exchanges().some((x) => x.request.url === FETCH_URL), 5000, 'the fetch’s exchange in the log');
    const handshakes = proxy.handshakes();
    const outer = handshakes.filter((h) => h.sni === PUBLIC_NAME);
    expect(outer.length).toBeGreaterThan(0);
    for (const handshake of outer) expect(handshake).toMatchObject({ ech: true, action: 'bump', rule: 'inspect-public' });
    expect(handshakes.filter((h) => h.sni === SECRET_NAME)).toContainEqual(expect.objectContaining({ action: 'bump', rule: 'inspect-secret' }));
    expect(handshakes.every((h) => h.sni === PUBLIC_NAME || h.sni === SECRET_NAME)).toBe(true);
    // Nothing was sent on the rejected connections: every exchange is the real name's.
    const rejected = new Set(outer.map((h) => h.connectionId));
    const exchanges = proxy.exchanges();
    expect(exchanges.map((x) => x.request.url)).toEqual(expect.arrayContaining(['/', FETCH_URL]));
    for (const exchange of exchanges) {
      expect(exchange.sni).toBe(SECRET_NAME);
      expect(rejected).not.toContain(exchange.connectionId);
    }
    expect(originReceived.length).toBeGreaterThan(0);
    for (const request of originReceived) expect(request.sni).toBe(SECRET_NAME);
    expect(proxy.garbage).toEqual([]);
  }, 240_000);
});
