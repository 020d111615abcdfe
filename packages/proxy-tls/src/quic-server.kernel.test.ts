import { execFile } from 'node:child_process';
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { NETNS_V4, type Netns, assertKernelTestsCanRun, createNetns, skipKernelTests } from '@coproxy/core/testing';
import * as x509 from '@peculiar/x509';
import { beforeAll, describe, expect, it } from 'vitest';
import type { QuicHandshake } from './events.js';
import { browserHome, runChromium } from './test-support/browser.js';
import { type CliProcess, startCli, within } from './test-support/cli-process.js';

// Debian's Chromium, headless, forced onto QUIC for one origin, through coproxy-tls on the
// nftables backend (TCP/443 and UDP/443, its defaults) under a policy that relays QUIC for
// that name, to a real HTTP/3 server at the original destination: Debian's quic-go 0.29
// (golang-github-lucas-clemente-quic-go-dev) on Debian's Go 1.19 (golang-go), our own small
// server in test-fixtures/quic-server/, built offline in GOPATH mode in beforeAll and cached
// by the hash of its source and toolchain. The page comes over HTTP/3 through the relay, and
// its script's fetch reports the protocol the server saw.
//
// Forced, because Chromium learning h3 from Alt-Svc does not use QUIC to a server whose
// certificate chains to a locally installed root (the test's CA, trusted through NSS): it
// closes the QUIC handshake with CERTIFICATE_VERIFY_FAILED and stays on TCP (seen in its
// net-log; the README says so). --origin-to-force-quic-on lifts that for the named origin.
//
// Needs chromium, certutil, go and quic-go's Debian package (.ci/run installs them). Off CI,
// COPROXY_SKIP_BROWSER_TESTS=1 skips it; under CI=true it runs and fails if any is missing.

const run = promisify(execFile);
const NAME = 'h3.test';
const PAGE_URL = `https://${NAME}/`;
/** Not an inspected port, so scraping is not itself a flow. */
const METRICS_PORT = 9464;
const skipBrowserTests = process.env.COPROXY_SKIP_BROWSER_TESTS === '1' && process.env.CI !== 'true';

const SOURCE_DIR = fileURLToPath(new URL('../test-fixtures/quic-server/', import.meta.url));
/** Built servers, one directory per hash of source and toolchain (node_modules is not committed). */
const CACHE_DIR = fileURLToPath(new URL('../node_modules/.cache/coproxy-quic-server/', import.meta.url));
/** Debian's Go packages live here; GOPATH mode reads them without fetching anything. */
const GOPATH = '/usr/share/gocode';
const QUIC_GO_PACKAGE = 'golang-github-lucas-clemente-quic-go-dev';
const INSTALL_HINT = `apt-get install -y --no-install-recommends golang-go ${QUIC_GO_PACKAGE}`;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

function tempDir(): Disposable & { readonly path: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-quic-server-'));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }) };
}

/**
 * The Go server, built once per source and toolchain: `go version`, the quic-go package's
 * Debian version and main.go make the key. A build goes to a temporary name and is renamed
 * into place, so a build cut short never leaves a binary that is used.
 */
async function buildQuicServer(): Promise<string> {
  const goEnv = { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '', GOCACHE: path.join(CACHE_DIR, 'gocache') };
  let goVersion: string;
  let quicGoVersion: string;
  try {
    goVersion = (await run('go', ['version'], { env: goEnv, timeout: 30_000 })).stdout.trim();
    quicGoVersion = (await run('dpkg-query', ['-W', '-f', '${Version}', QUIC_GO_PACKAGE], { timeout: 30_000 })).stdout.trim();
  } catch (error) {
    throw new Error(`Go or Debian's quic-go is not installed (${(error as Error).message.split('\n')[0]}): ${INSTALL_HINT}`, { cause: error });
  }
  const hash = createHash('sha256').update(goVersion).update('\0').update(quicGoVersion).update('\0').update(fs.readFileSync(path.join(SOURCE_DIR, 'main.go'))).digest('hex').slice(0, 16);
  const binary = path.join(CACHE_DIR, hash, 'quic-server');
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(path.dirname(binary), { recursive: true });
  const partial = `${binary}.${process.pid}.partial`;
  try {
    // One package at a time, one thread, at the lowest priority: a cold build is ~90 s of
    // both cores otherwise, which starves the suite's other tests running beside it in CI.
    await run('nice', ['-n', '19', 'go', 'build', '-p', '1', '-o', partial, '.'], { cwd: SOURCE_DIR, env: { ...goEnv, GOMAXPROCS: '1' }, timeout: 420_000 });
  } catch (error) {
    fs.rmSync(partial, { force: true });
    throw new Error(`building test-fixtures/quic-server with ${goVersion} and quic-go ${quicGoVersion} failed: ${(error as { stderr?: string }).stderr ?? String(error)}`, { cause: error });
  }
  fs.renameSync(partial, binary);
  return binary;
}

const pem = (label: string, der: ArrayBuffer): string => `-----BEGIN ${label}-----\n${Buffer.from(der).toString('base64').replace(/.{1,64}/g, '$&\n')}-----END ${label}-----\n`;

/** A CA and a leaf for `name` signed by it, as PEM files for the Go server and the browser's NSS database. */
async function originCertificate(dir: string, name: string): Promise<{ caPath: string; chainPath: string; keyPath: string }> {
  const algorithm = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
  const now = Date.now();
  const notBefore = new Date(now - 86_400_000);
  const notAfter = new Date(now + 86_400_000);
  const caKeys = await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: `01${randomBytes(8).toString('hex')}`,
    name: 'CN=coproxy-tls quic-go origin CA',
    notBefore,
    notAfter,
    signingAlgorithm: algorithm,
    keys: caKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const leafKeys = await webcrypto.subtle.generateKey(algorithm, true, ['sign', 'verify']);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: `01${randomBytes(8).toString('hex')}`,
    subject: `CN=${name}`,
    issuer: ca.subject,
    notBefore,
    notAfter,
    signingAlgorithm: algorithm,
    publicKey: leafKeys.publicKey,
    signingKey: caKeys.privateKey,
    extensions: [
      new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: name }]),
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      await x509.AuthorityKeyIdentifierExtension.create(ca),
    ],
  });
  const files = { caPath: path.join(dir, 'origin-ca.crt'), chainPath: path.join(dir, 'origin-chain.crt'), keyPath: path.join(dir, 'origin.key') };
  fs.writeFileSync(files.caPath, ca.toString('pem') + '\n');
  fs.writeFileSync(files.chainPath, `${leaf.toString('pem')}\n${ca.toString('pem')}\n`);
  fs.writeFileSync(files.keyPath, pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', leafKeys.privateKey)), { mode: 0o600 });
  return files;
}

/** What the Go server printed: a line per request, and per ClientHello its QUIC side read. */
type ServerLine =
  | { readonly request: { readonly method: string; readonly url: string; readonly proto: string; readonly host: string; readonly remote: string } }
  | { readonly quicHello: { readonly sni: string; readonly alpn: readonly string[]; readonly remote: string } };

/** The Go server at `address`:443 (UDP) in the namespace; resolves once it has bound its socket. */
async function startQuicServer(netns: Netns, binary: string, address: string, files: { chainPath: string; keyPath: string }): Promise<ServerLine[]> {
  const child = netns.spawn(binary, ['-addr', `${address}:443`, '-cert', files.chainPath, '-key', files.keyPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: ServerLine[] = [];
  let stderr = '';
  let partial = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      const complete = (partial + chunk.toString()).split('\n');
      partial = complete.pop() ?? '';
      for (const raw of complete) {
        const line = JSON.parse(raw) as ServerLine | { ready: true };
        if ('ready' in line) resolve();
        else lines.push(line);
      }
    });
    child.once('exit', (code) => reject(new Error(`the quic-go server exited early with ${String(code)}: ${stderr.trim()}`)));
  });
  await within(ready, 20_000, 'the quic-go server to listen');
  return lines;
}

/** The QUIC handshake lines the CLI logged. */
const quicHandshakes = (proxy: CliProcess): QuicHandshake[] =>
  proxy.lines.flatMap((line) => {
    const handshake = line.handshake as QuicHandshake | { transport?: undefined } | undefined;
    return line.msg === 'handshake' && handshake?.transport === 'quic' ? [handshake] : [];
  });

/** The samples of a Prometheus text exposition, by `name{labels}`. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

/** One line of core's event log (COPROXY_EVENT_LOG), the fields this test reads. */
interface EventLogLine {
  readonly event: string;
  readonly connectionId?: string;
  readonly transport?: string;
  readonly bytesFromClient?: number;
  readonly bytesToClient?: number;
  readonly datagramsFromClient?: number;
  readonly datagramsToClient?: number;
}

describe.skipIf(skipKernelTests || skipBrowserTests)('Chromium over HTTP/3 through coproxy-tls relaying QUIC to a quic-go server, on nftables in a network namespace', () => {
  let serverBinary: string;

  beforeAll(async () => {
    await assertKernelTestsCanRun();
    for (const [command, args] of [['chromium', ['--version']], ['certutil', ['-H']]] as const) {
      try {
        await run(command, [...args]);
      } catch (error) {
        // certutil -H prints its help and exits 1: only a missing binary counts.
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`'${command}' is not installed (apt-get install -y chromium libnss3-tools)`, { cause: error });
      }
    }
    serverBinary = await buildQuicServer();
  }, 480_000);

  it('loads the page over HTTP/3 through the relay: the server saw HTTP/3, the proxy logged the QUIC hello (SNI, h3, q-JA4) as relayed, and counted bytes both ways', async () => {
    await using netns = await createNetns('quic-server');
    using dir = tempDir();
    const origin = await originCertificate(dir.path, NAME);
    const served = await startQuicServer(netns, serverBinary, NETNS_V4, origin);

    const policyFile = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policyFile, JSON.stringify({ default: 'bump', rules: [{ name: 'h3-origin', when: { quic: true, sni: NAME }, action: 'splice' }] }));
    const eventLog = path.join(dir.path, 'events.jsonl');
    // The CLI inherits the variable when spawned; core's event log has each flow's `closed` with its byte counts.
    process.env.COPROXY_EVENT_LOG = eventLog;
    let proxy: CliProcess;
    try {
      proxy = startCli(netns, [
        ...['--id', 'acme-tls', '--priority', '0', '--backend', 'nftables', '--policy', policyFile],
        ...['--ca-dir', path.join(dir.path, 'proxy-ca'), '--metrics', `127.0.0.1:${METRICS_PORT}`],
      ]);
    } finally {
      delete process.env.COPROXY_EVENT_LOG;
    }
    await proxy.ready;

    // Chromium trusts the origin's CA (not the proxy's: a relayed flow is the origin's TLS), forced onto QUIC for the origin.
    const home = await browserHome(path.join(dir.path, 'home'), origin.caPath);
    const args = ['--enable-quic', `--origin-to-force-quic-on=${NAME}:443`, `--host-resolver-rules=MAP ${NAME} ${NETNS_V4}`];
    const browser = await runChromium(netns, home, path.join(dir.path, 'profile'), PAGE_URL, args);

    // What the user sees: the page, and its script's fetch answered over HTTP/3.
    expect(browser.dom, browser.stderr).toContain('<p id="result">protocol: HTTP/3.0</p>');
    expect(browser.stderr).not.toMatch(/ERR_QUIC|ERR_CERT|ERR_CONNECTION/);

    // The server: the page and the fetch over HTTP/3, and every hello it read for the name, with h3.
    const requests = served.flatMap((line) => ('request' in line ? [line.request] : []));
    const hellos = served.flatMap((line) => ('quicHello' in line ? [line.quicHello] : []));
    expect(requests).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ method: 'GET', url: '/', proto: 'HTTP/3.0', host: NAME }),
        expect.objectContaining({ method: 'GET', url: '/api/proto?from=script', proto: 'HTTP/3.0', host: NAME }),
      ]),
    );
    expect(hellos.length).toBeGreaterThanOrEqual(1);
    for (const hello of hellos) expect(hello).toMatchObject({ sni: NAME, alpn: ['h3'] });

    // The proxy: each QUIC flow's hello read, logged and relayed by the rule; no TCP handshake at all.
    const quic = quicHandshakes(proxy);
    expect(quic.length).toBeGreaterThanOrEqual(hellos.length);
    for (const attempt of quic) {
      expect(attempt).toMatchObject({ transport: 'quic', quicVersion: 'v1', sni: NAME, alpn: ['h3'], action: 'relay', rule: 'h3-origin', destination: { address: NETNS_V4, port: 443 } });
      expect(attempt.ja4).toMatch(/^q13d\d{4}h3_[0-9a-f]{12}_[0-9a-f]{12}$/);
    }
    expect(proxy.handshakes().filter((h) => (h as { transport?: string }).transport !== 'quic')).toEqual([]);
    // Relayed, not passed by: the server's QUIC peers are the proxy's onward sockets, never Chromium's own.
    const chromiumSockets = new Set(quic.map((q) => `${q.source.address}:${q.source.port}`));
    for (const peer of [...hellos.map((h) => h.remote), ...requests.map((r) => r.remote)]) expect(chromiumSockets.has(peer)).toBe(false);

    // Counted while it runs: the relayed flows.
    const scraped = await netns.run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${METRICS_PORT}/metrics`]);
    expect(parseMetrics(scraped.stdout).get('coproxy_tls_quic_flows_total{action="relay"}')).toBe(quic.length);

    // A clean stop closes the flows; each relayed flow's `closed` carries what went each way.
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 20_000, 'the CLI to stop')).toEqual({ code: 0, signal: null });
    const events = fs
      .readFileSync(eventLog, 'utf8')
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as EventLogLine);
    // Every relayed flow closed with datagrams and bytes both ways (each reached the server, whose answers came back).
    for (const flow of quic) {
      const closed = events.find((e) => e.event === 'closed' && e.connectionId === flow.flowId);
      expect(closed, flow.flowId).toMatchObject({ transport: 'udp' });
      for (const count of ['bytesFromClient', 'bytesToClient', 'datagramsFromClient', 'datagramsToClient'] as const) expect(closed![count], count).toBeGreaterThan(0);
    }
    expect(proxy.garbage).toEqual([]);
  }, 180_000);
});
