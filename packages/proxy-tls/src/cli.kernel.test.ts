import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import type * as BuiltPackage from './index.js';
import { NETNS_V4, assertKernelTestsCanRun, createNetns, skipKernelTests, type Netns } from '@coproxy/core/testing';
import { startCli, until, within } from './test-support/cli-process.js';

// The CLI as an operator runs it, on the nftables backend: a separate process inside a
// network namespace of the test's own (unique name, removed with `await using` even when
// the test fails, every process in it killed), with an HTTPS origin there too, and
// unmodified curl as the client. The CLI, the origin and the test's CA are the built
// package (dist/), which vitest's global setup rebuilds when stale.
const testSupport = fileURLToPath(new URL('./test-support/', import.meta.url));
const built = new URL('../dist/index.js', import.meta.url).href;
const ID = 'acme-tls';
const ORIGIN_PORT = 8443;
/** Not an inspected port, so scraping the metrics is not itself a handshake. */
const METRICS_PORT = 9465;
const ORIGIN_CA_SUBJECT = 'CN=coproxy-tls test origin CA';
/**
 * How long a child (the origin, curl) may take to start: a hang guard, not a measure. On a
 * 2-core machine at load 18-22 the origin (Node and the CA module) took over 10 s to listen.
 */
const START_MS = 30_000;
/** The subject a CA created by `--ca-dir` gets. */
const PROXY_CA_SUBJECT = 'CN=coproxy-tls local CA';

/** What the origin reports of each request it received (test-support/https-origin.mjs). */
interface OriginRequest {
  readonly method: string;
  readonly url: string;
  readonly host: string;
  readonly bytes: number;
  readonly sni: string;
  readonly local: string;
  /** SHA-256 fingerprint of the certificate the origin presented, `AB:CD:…`. */
  readonly certificate: string;
}

function tempDir(): Disposable & { readonly path: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-kernel-'));
  return { path: dir, [Symbol.dispose]: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Starts the origin on the namespace's non-loopback address; returns the requests it receives, as they arrive. */
async function startOrigin(netns: Netns, caDir: string): Promise<OriginRequest[]> {
  const received: OriginRequest[] = [];
  const child = netns.spawn(process.execPath, [path.join(testSupport, 'https-origin.mjs'), caDir, NETNS_V4, String(ORIGIN_PORT)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = new Promise<void>((resolve, reject) => {
    child.on('message', (message: { ready?: boolean; request?: OriginRequest }) => {
      if (message.request !== undefined) received.push(message.request);
      if (message.ready === true) resolve();
    });
    child.once('exit', (code) => reject(new Error(`the origin exited early with ${String(code)}`)));
  });
  await within(ready, START_MS, 'the origin to listen');
  return received;
}

interface CurlResult {
  /** curl's exit code: 0, 35 (TLS handshake failed), 60 (certificate not verified), … */
  readonly exitCode: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Unmodified curl inside the namespace; resolves whatever curl's exit code. */
async function curl(netns: Netns, args: readonly string[]): Promise<CurlResult> {
  const child = netns.spawn('curl', ['-sS', '--max-time', '30', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exitCode = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), START_MS + 15_000, `curl ${args.join(' ')}`);
  return { exitCode, stdout, stderr };
}

const WRITE_OUT = '\n--curl-write-out--\n';

interface HttpsResult extends CurlResult {
  /** The HTTP status; 0 when there was none. */
  readonly status: number;
  /** The HTTP version curl spoke (`1.1`, `2`); `0` when there was none. */
  readonly httpVersion: string;
  readonly body: string;
  /** The certificate the server presented to curl, when the handshake got that far. */
  readonly leaf: X509Certificate | undefined;
}

/** `curl https://<name>:<port><path>`, the name resolved to the origin's address and trusting only `cacert`. */
async function https(netns: Netns, name: string, urlPath: string, cacert: string, extra: readonly string[] = []): Promise<HttpsResult> {
  const result = await curl(netns, [
    ...['--resolve', `${name}:${ORIGIN_PORT}:${NETNS_V4}`, '--cacert', cacert],
    ...['--write-out', `${WRITE_OUT}%{http_code}\n%{http_version}\n%{certs}`, ...extra, `https://${name}:${ORIGIN_PORT}${urlPath}`],
  ]);
  const cut = result.stdout.lastIndexOf(WRITE_OUT);
  const [status = '', httpVersion = '', ...certs] = result.stdout.slice(cut + WRITE_OUT.length).split('\n');
  const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(certs.join('\n'))?.[0];
  return { ...result, status: Number(status), httpVersion, body: result.stdout.slice(0, Math.max(cut, 0)), leaf: pem === undefined ? undefined : new X509Certificate(pem) };
}

/** The samples of a Prometheus text exposition, by `name{labels}`. */
function parseMetrics(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m?.[1] !== undefined && m[2] !== undefined) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

/** Scrapes `/metrics` with curl in the namespace until `done` holds for the samples (at most 5 s). */
async function scrapeUntil(netns: Netns, done: (samples: Map<string, number>) => boolean, what: string): Promise<Map<string, number>> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const scraped = await curl(netns, [`http://127.0.0.1:${METRICS_PORT}/metrics`]);
    expect(scraped).toMatchObject({ exitCode: 0, stderr: '' });
    const samples = parseMetrics(scraped.stdout);
    if (done(samples)) return samples;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the last scrape:\n${scraped.stdout}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function nftTables(netns: Netns): Promise<string> {
  return (await netns.run('nft', ['list', 'tables'])).stdout;
}

describe.skipIf(skipKernelTests)('coproxy-tls CLI on the nftables backend, in a network namespace', () => {
  beforeAll(assertKernelTestsCanRun);

  it('splices, bumps and blocks unmodified curl by SNI, counts the handshakes, and leaves no table after SIGTERM', async () => {
    await using netns = await createNetns('cli');
    using dir = tempDir();
    const originCaDir = path.join(dir.path, 'origin-ca');
    const proxyCaDir = path.join(dir.path, 'proxy-ca');
    const { CertificateAuthority } = (await import(built)) as typeof BuiltPackage;
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: ORIGIN_CA_SUBJECT })).certPath;
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(
      policy,
      JSON.stringify({
        default: 'splice',
        rules: [
          { name: 'inspect-bump', when: { sni: 'bump.test' }, action: 'bump' },
          { name: 'deny-block', when: { sni: 'block.test' }, action: 'block' },
        ],
      }),
    );
    const originReceived = await startOrigin(netns, originCaDir);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(ORIGIN_PORT), '--backend', 'nftables', '--policy', policy],
      ...['--ca-dir', proxyCaDir, '--origin-ca', originCa, '--metrics', `127.0.0.1:${METRICS_PORT}`],
    ]);
    const listening = await proxy.ready;
    expect(await nftTables(netns)).toContain(`table inet coproxy-${ID}`);
    const proxyCa = path.join(proxyCaDir, 'ca.crt');
    const proxyCaCert = new X509Certificate(fs.readFileSync(proxyCa));
    expect(proxyCaCert.subject).toBe(PROXY_CA_SUBJECT);

    // (1) Spliced: curl talks TLS with the origin itself, through the proxy: it verifies
    // the very certificate the origin presented, issued by the origin's CA.
    const spliced = await https(netns, 'splice.test', '/spliced?x=1', originCa);
    expect(spliced).toMatchObject({ exitCode: 0, status: 200 });
    const splicedSeen = JSON.parse(spliced.body) as OriginRequest;
    expect(splicedSeen).toMatchObject({ method: 'GET', url: '/spliced?x=1', host: `splice.test:${ORIGIN_PORT}`, sni: 'splice.test', local: NETNS_V4 });
    expect(spliced.leaf?.fingerprint256).toBe(splicedSeen.certificate);
    expect(spliced.leaf?.issuer).toBe(ORIGIN_CA_SUBJECT);
    expect(spliced.leaf?.subject).toBe('CN=splice.test');

    // (2) Bumped: curl trusts the proxy's CA and gets the origin's answer through a leaf
    // the proxy minted; the origin saw the request over the proxy's own, verified session.
    // curl speaks h2 to the proxy, which speaks HTTP/1.1 to this origin (it offers no h2).
    const secret = 'card=4111111111111111';
    const bumped = await https(netns, 'bump.test', '/inspect/me?q=1', proxyCa, ['--http2', '--data-binary', secret]);
    expect(bumped).toMatchObject({ exitCode: 0, status: 200, httpVersion: '2' });
    const bumpedSeen = JSON.parse(bumped.body) as OriginRequest;
    expect(bumpedSeen).toMatchObject({ method: 'POST', url: '/inspect/me?q=1', host: `bump.test:${ORIGIN_PORT}`, bytes: secret.length, sni: 'bump.test' });
    expect(bumped.leaf?.subject).toBe('CN=bump.test');
    expect(bumped.leaf?.issuer).toBe(PROXY_CA_SUBJECT);
    expect(bumped.leaf?.checkIssued(proxyCaCert)).toBe(true);
    expect(bumped.leaf?.verify(proxyCaCert.publicKey)).toBe(true);
    expect(bumped.leaf?.fingerprint256).not.toBe(bumpedSeen.certificate);
    // The decrypted exchange, in the CLI's JSON log.
    await until(() => proxy.exchanges().length === 1, 5000, 'the exchange log line');
    expect(proxy.exchanges()).toEqual([
      {
        connectionId: expect.any(String) as string,
        sni: 'bump.test',
        sequence: 1,
        protocols: { client: 'h2', origin: 'http/1.1' },
        decision: { action: 'allow', by: [] },
        request: { method: 'POST', url: '/inspect/me?q=1', host: `bump.test:${ORIGIN_PORT}`, bodyBytes: secret.length },
        response: { status: 200, bodyBytes: Buffer.byteLength(bumped.body) },
      },
    ]);
    // Trusting only the origin's CA, curl refuses the proxy's leaf for bump.test.
    const untrusted = await https(netns, 'bump.test', '/never', originCa);
    expect(untrusted.exitCode).toBe(60); // curl: peer certificate cannot be authenticated
    // The proxy sends its CA along with the leaf: a self-signed root curl was not told to trust.
    expect(untrusted.stderr).toMatch(/SSL certificate problem: self-signed certificate in certificate chain/);

    // (3) Blocked: a TLS alert instead of a handshake, and the origin never hears of it.
    const blocked = await https(netns, 'block.test', '/never', originCa);
    expect(blocked.exitCode).toBe(35); // curl: SSL connect error
    expect(blocked.stderr).toMatch(/alert access denied/);
    expect(blocked.leaf).toBeUndefined();

    expect(originReceived.map((r) => `${r.sni} ${r.method} ${r.url}`)).toEqual(['splice.test GET /spliced?x=1', 'bump.test POST /inspect/me?q=1']);
    // The CLI logs a blocked handshake after its alert is on the wire: curl may have exited
    // (and the test read the log) before the line arrives. Under load it did.
    await until(() => proxy.handshakes().length >= 4, 5000, 'four handshake log lines');
    const handshakes = proxy.handshakes();
    expect(handshakes.map((h) => [h.sni, h.action, h.rule])).toEqual([
      ['splice.test', 'splice', undefined],
      ['bump.test', 'bump', 'inspect-bump'],
      ['bump.test', 'bump', 'inspect-bump'],
      ['block.test', 'block', 'deny-block'],
    ]);
    for (const handshake of handshakes) {
      expect(handshake).toMatchObject({ destination: { address: NETNS_V4, port: ORIGIN_PORT, family: 4 }, redirectedBy: [ID], alpn: ['h2', 'http/1.1'] });
    }

    // (4) Metrics, scraped with curl once the four client connections have closed.
    const samples = await scrapeUntil(
      netns,
      (s) => s.get('coproxy_tls_connections_total{kind="tls"}') === 4 && s.get('coproxy_tls_open_connections') === 0,
      'four closed connections',
    );
    expect(Object.fromEntries([...samples].filter(([name]) => /^coproxy_tls_(handshakes|connections|bumped_exchanges)_total/.test(name)))).toEqual({
      'coproxy_tls_connections_total{kind="tls"}': 4,
      'coproxy_tls_handshakes_total{action="splice"}': 1,
      'coproxy_tls_handshakes_total{action="bump"}': 2,
      'coproxy_tls_handshakes_total{action="block"}': 1,
      coproxy_tls_bumped_exchanges_total: 1,
    });
    expect(proxy.lines.find((line) => line.msg === 'ready')).toMatchObject({ backend: 'nftables', listening, service: 'coproxy-tls', id: ID });

    // (5) SIGTERM: a clean exit, and the redirect is gone with the process.
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 30_000, 'the CLI to exit after SIGTERM')).toEqual({ code: 0, signal: null });
    expect(proxy.lines.at(-1)).toMatchObject({ msg: 'shutting down', signal: 'SIGTERM' });
    expect(await nftTables(netns)).not.toContain('coproxy-');
    // curl now reaches the origin directly: its own certificate for bump.test too.
    const direct = await https(netns, 'bump.test', '/direct', originCa);
    expect(direct).toMatchObject({ exitCode: 0, status: 200 });
    expect(direct.leaf?.issuer).toBe(ORIGIN_CA_SUBJECT);
    expect(direct.leaf?.fingerprint256).toBe((JSON.parse(direct.body) as OriginRequest).certificate);
    expect(proxy.handshakes()).toHaveLength(4);
    expect(proxy.garbage).toEqual([]);
  }, 180_000);
  it('bumps nghttp2’s h2load over h2 (20 requests, 4 streams at a time on 2 connections), each stream reported and converted to HTTP/1.1 for the origin', async () => {
    await using netns = await createNetns('h2load');
    using dir = tempDir();
    const originCaDir = path.join(dir.path, 'origin-ca');
    const { CertificateAuthority } = (await import(built)) as typeof BuiltPackage;
    const originCa = (await CertificateAuthority.open({ dir: originCaDir, subject: ORIGIN_CA_SUBJECT })).certPath;
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ default: 'bump' }));
    const originReceived = await startOrigin(netns, originCaDir);
    const proxy = startCli(netns, [
      ...['--id', ID, '--priority', '0', '--ports', String(ORIGIN_PORT), '--backend', 'nftables', '--policy', policy],
      ...['--ca-dir', path.join(dir.path, 'proxy-ca'), '--origin-ca', originCa],
    ]);
    await proxy.ready;

    // h2load sends the URI's host as SNI and :authority, and dials --connect-to instead.
    const child = netns.spawn('h2load', ['-n', '20', '-c', '2', '-m', '4', `--connect-to=${NETNS_V4}:${ORIGIN_PORT}`, `https://h2.test:${ORIGIN_PORT}/load`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exitCode = await within(new Promise<number | null>((resolve) => child.once('close', resolve)), 30_000, 'h2load');

    expect(exitCode).toBe(0);
    expect(stdout).toMatch(/Application protocol: h2/);
    expect(stdout).toMatch(/requests: 20 total, 20 started, 20 done, 20 succeeded, 0 failed, 0 errored/);
    expect(stdout).toMatch(/status codes: 20 2xx/);
    await until(() => proxy.exchanges().length === 20, 5000, 'twenty exchange log lines');
    for (const exchange of proxy.exchanges()) {
      expect(exchange).toMatchObject({ sni: 'h2.test', protocols: { client: 'h2', origin: 'http/1.1' }, request: { method: 'GET', url: '/load' }, response: { status: 200 } });
    }
    expect(proxy.handshakes().map((h) => [h.sni, h.action])).toEqual([
      ['h2.test', 'bump'],
      ['h2.test', 'bump'],
    ]);
    expect(originReceived.length).toBe(20);
    expect(originReceived.every((r) => r.sni === 'h2.test' && r.url === '/load')).toBe(true);
    proxy.child.kill('SIGTERM');
    expect(await within(proxy.exited, 30_000, 'the CLI to exit after SIGTERM')).toEqual({ code: 0, signal: null });
  }, 180_000);
});
