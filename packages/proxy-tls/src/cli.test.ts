import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { dial, readExactly, startEchoOrigin, startTlsOrigin, tempDir, testCa, tlsClient, uniqueId, until, within } from './test-support/harness.js';
import { startHttpsOrigin } from './test-support/h2-support.js';

// The built CLI (dist/): vitest's global setup rebuilds it when stale. These run it on the
// embedded backend as a plain process; cli.kernel.test.ts runs it on nftables.
const cli = fileURLToPath(new URL('../dist/cli.js', import.meta.url));

/**
 * How long the CLI may take to start or to stop: a hang guard, not a measure. On a 2-core
 * machine at load 18-22 a child process took over 10 s just to start.
 */
const START_MS = 30_000;

interface Finished {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

interface Running {
  readonly child: ChildProcess;
  readonly output: { stdout: string; stderr: string };
  readonly finished: Promise<Finished>;
}

function start(args: string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = { stdout: '', stderr: '' };
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
  const finished = new Promise<Finished>((resolve) => child.once('close', (code, signal) => resolve({ code, signal, ...output })));
  return { child, output, finished };
}

const stillRunning = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null;

/** Runs the CLI to its end; kills it if it outlives `timeoutMs`. */
async function run(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = START_MS): Promise<Finished> {
  const running = start(args, env);
  try {
    return await within(running.finished, timeoutMs, `coproxy-tls ${args.join(' ')}`);
  } finally {
    if (stillRunning(running.child)) running.child.kill('SIGKILL');
  }
}

const jsonLines = (text: string): Record<string, unknown>[] =>
  text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);

describe('coproxy-tls (CLI)', { timeout: 120_000 }, () => {
  it('prints its usage for --help and exits 0', async () => {
    const result = await run(['--help']);

    expect(result.code).toBe(0);
    for (const option of ['--id', '--priority', '--ports', '--udp-ports', '--backend', '--policy', '--rules', '--ca-dir', '--origin-ca', '--metrics', '--unrecognised', '--early-onward']) {
      expect(result.stdout).toContain(option);
    }
    // Commander wraps help text: read it with the line breaks and indents folded.
    const help = result.stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(/--udp-ports <list>.*\(default: "443"\)/);
    expect(help).toContain('no readable QUIC Initial');
    expect(help).toContain('sees an empty connection, even for a hello that is then refused');
  });

  it('exits 2 for a policy file that does not validate, naming the file and the path of the problem in it', async () => {
    using dir = tempDir();
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policy, JSON.stringify({ rules: [{ name: 'ok', action: 'splice' }, { name: 'bad', when: { sni: 'a.example' }, action: 'inspect' }] }));

    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--policy', policy], { COPROXY_REGISTRY: dir.path });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`invalid policy in ${policy}`);
    expect(result.stderr).toContain(`${policy}.rules[1].action`);
    expect(fs.readdirSync(dir.path).filter((name) => name.endsWith('.json') && name !== 'policy.json')).toEqual([]);
  });

  it('exits 2 for a policy file that is not JSON, naming the file', async () => {
    using dir = tempDir();
    const policy = path.join(dir.path, 'policy.json');
    fs.writeFileSync(policy, '{ "default": "splice", ');

    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--policy', policy], { COPROXY_REGISTRY: dir.path });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`invalid policy in ${policy}`);
    expect(result.stderr).toContain('cannot read it as JSON');
  });

  it('serves on the embedded backend with COPROXY_REGISTRY, logs each handshake, and exits 0 on SIGTERM', async () => {
    using registry = tempDir('coproxy-tls-registry-');
    using originCa = await testCa('CN=cli origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, onSession: (session) => session.end('from the origin') });
    const id = uniqueId('cli');
    const running = start(['--id', id, '--priority', '5', '--ports', String(origin.port), '--backend', 'embedded'], { COPROXY_REGISTRY: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      expect(fs.readdirSync(registry.path)).toContain(`${id}.json`);

      const { socket } = await tlsClient(registry.path, origin.port, { servername: 'cli.example', ca: originCa.certPem });
      const reply = await within(
        new Promise<string>((resolve) => {
          let text = '';
          socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
          socket.once('end', () => resolve(text));
        }),
        5000,
        'the origin’s reply',
      );
      expect(reply).toBe('from the origin');
      await until(() => running.output.stdout.includes('"msg":"handshake"'), 5000, 'the handshake to be logged');

      running.child.kill('SIGTERM');
      const result = await within(running.finished, START_MS, 'the CLI to exit');

      expect(result).toMatchObject({ code: 0, signal: null, stderr: '' });
      const lines = jsonLines(result.stdout);
      expect(lines[0]).toMatchObject({ msg: 'ready', service: 'coproxy-tls', id, backend: 'embedded' });
      expect(lines.find((line) => line.msg === 'handshake')).toMatchObject({ handshake: { sni: 'cli.example', action: 'splice', redirectedBy: [id] } });
      expect(lines.at(-1)).toMatchObject({ msg: 'shutting down', signal: 'SIGTERM' });
      // Its registry entry is gone: the next connection goes direct.
      expect(fs.readdirSync(registry.path).filter((name) => name.endsWith('.json'))).toEqual([]);
    } finally {
      if (stillRunning(running.child)) running.child.kill('SIGKILL');
    }
  });

  it('exits 2 for an --unrecognised action other than block or relay', async () => {
    using dir = tempDir();
    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--unrecognised', 'sometimes'], { COPROXY_REGISTRY: dir.path });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--unrecognised');
  });

  it('relays unrecognised bytes with --unrecognised relay, and logs each one', async () => {
    using registry = tempDir('coproxy-tls-registry-');
    await using origin = await startEchoOrigin();
    const id = uniqueId('cli');
    const running = start(['--id', id, '--priority', '5', '--ports', String(origin.port), '--unrecognised', 'relay'], { COPROXY_REGISTRY: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      const bytes = Buffer.from('\x00not TLS, not HTTP\r\n', 'latin1');
      const client = await dial(registry.path, origin.port);
      client.write(bytes);
      expect(await readExactly(client, bytes.length)).toEqual(bytes);
      client.destroy();
      await until(() => running.output.stdout.includes('"msg":"unrecognised"'), 5000, 'the unrecognised line');

      running.child.kill('SIGTERM');
      const result = await within(running.finished, START_MS, 'the CLI to exit');
      expect(result.code).toBe(0);
      expect(jsonLines(result.stdout).find((line) => line.msg === 'unrecognised')).toMatchObject({ action: 'relay', reason: 'unknown', firstBytes: bytes.subarray(0, 16).toString('hex') });
    } finally {
      if (stillRunning(running.child)) running.child.kill('SIGKILL');
    }
  });
  it('closes a bumped connection whose client sends no request, after --idle-timeout', async () => {
    using registry = tempDir('coproxy-tls-registry-');
    using caDir = tempDir('coproxy-tls-ca-');
    using files = tempDir('coproxy-tls-files-');
    using originCa = await testCa('CN=idle origin CA');
    await using origin = await startTlsOrigin({ ca: originCa, ALPNProtocols: ['http/1.1'] });
    const policy = path.join(files.path, 'policy.json');
    const originCaFile = path.join(files.path, 'origin-ca.pem');
    fs.writeFileSync(policy, JSON.stringify({ default: 'bump' }));
    fs.writeFileSync(originCaFile, originCa.certPem);
    const args = ['--id', uniqueId('cli'), '--priority', '5', '--ports', String(origin.port), '--policy', policy, '--ca-dir', caDir.path, '--origin-ca', originCaFile];
    const running = start([...args, '--idle-timeout', '300'], { COPROXY_REGISTRY: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      // A bumped TLS session (the proxy's leaf: this client checks nothing, it only idles) that never sends a request.
      // Over the plain socket dial() gives (not the harness's tap), so the proxy's close reaches it as an end.
      const socket = tls.connect({ socket: await dial(registry.path, origin.port), servername: 'idle.example', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
      await within(new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject)), 10_000, 'the bumped handshake');
      expect(socket.getPeerCertificate().issuer.CN).not.toBe('idle origin CA');
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      // The default (120 s) would outlast this guard by far: the flag is what closes it.
      await within(closed, 15_000, 'the proxy to close the silent connection');
      running.child.kill('SIGTERM');
      expect((await within(running.finished, START_MS, 'the CLI to exit')).code).toBe(0);
    } finally {
      if (stillRunning(running.child)) running.child.kill('SIGKILL');
    }
  });

  it('exits 2 for a rule file that does not validate, naming the file and the path of the problem in it', async () => {
    using dir = tempDir();
    const rules = path.join(dir.path, 'rules.json');
    fs.writeFileSync(rules, JSON.stringify({ rules: [{ name: 'ok', verdict: 'allow' }, { name: 'bad', when: { path: 'admin' }, verdict: 'block' }] }));

    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--rules', rules], { COPROXY_REGISTRY: dir.path });

    expect(result.code).toBe(2);
    expect(result.stderr).toContain(`invalid rules in ${rules}`);
    expect(result.stderr).toContain('rules[1].when.path');
  });

  it('judges bumped requests by a --rules file in coproxy-http’s format: the rule’s status for a blocked path, the origin for the rest', async () => {
    using registry = tempDir('coproxy-tls-registry-');
    using caDir = tempDir('coproxy-tls-ca-');
    using files = tempDir('coproxy-tls-files-');
    using originCa = await testCa('CN=rules origin CA');
    await using origin = await startHttpsOrigin(originCa, ['http/1.1']);
    const policy = path.join(files.path, 'policy.json');
    const rules = path.join(files.path, 'rules.json');
    const originCaFile = path.join(files.path, 'origin-ca.pem');
    fs.writeFileSync(policy, JSON.stringify({ default: 'bump' }));
    fs.writeFileSync(rules, JSON.stringify({ rules: [{ name: 'no-admin', when: { host: 'SHOP.example', path: '/admin/*' }, verdict: 'block', status: 451, reason: 'admin is off limits' }] }));
    fs.writeFileSync(originCaFile, originCa.certPem);
    const args = ['--id', uniqueId('cli'), '--priority', '5', '--ports', String(origin.port), '--policy', policy, '--rules', rules, '--ca-dir', caDir.path, '--origin-ca', originCaFile];
    const running = start(args, { COPROXY_REGISTRY: registry.path });
    try {
      await until(() => running.output.stdout.includes('"msg":"ready"'), START_MS, `the CLI to be ready (stderr: ${running.output.stderr})`);
      const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
      const get = async (target: string): Promise<string> => {
        const socket = tls.connect({ socket: await dial(registry.path, origin.port), servername: 'shop.example', ca: proxyCa, ALPNProtocols: ['http/1.1'] });
        socket.write(`GET ${target} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n`);
        let text = '';
        socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
        await within(new Promise((resolve, reject) => socket.once('close', resolve).once('error', reject)), 10_000, `GET ${target}`);
        return text;
      };
      // The rule's path is judged canonical, as in coproxy-http: /x/../admin/ is /admin/.
      const blocked = await get('/x/../admin/users');
      expect(blocked.split('\r\n')[0]).toBe('HTTP/1.1 451 Unavailable For Legal Reasons');
      expect(blocked).toContain('admin is off limits');
      const allowed = await get('/shop');
      expect(allowed.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');
      expect(origin.requests.map((r) => r.path)).toEqual(['/shop']);
      await until(() => running.output.stdout.includes('/shop'), 5000, 'the allowed exchange in the log');
      const logged = jsonLines(running.output.stdout).filter((line) => line.exchange !== undefined || line.request !== undefined);
      expect(JSON.stringify(logged)).toContain('no-admin');
      running.child.kill('SIGTERM');
      expect((await within(running.finished, START_MS, 'the CLI to exit')).code).toBe(0);
    } finally {
      if (stillRunning(running.child)) running.child.kill('SIGKILL');
    }
  });

  it('exits 2 for an --idle-timeout that is not a positive integer', async () => {
    using dir = tempDir();
    const result = await run(['--id', uniqueId('cli'), '--priority', '1', '--idle-timeout', '0'], { COPROXY_REGISTRY: dir.path });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--idle-timeout');
  });
});
