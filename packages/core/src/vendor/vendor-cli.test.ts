import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { Command } from 'commander';
import { Gauge, Registry } from 'prom-client';
import { NEVER, Subject } from 'rxjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { connect } from '../backends/embedded/connect.js';
import { relay } from '../net/relay.js';
import { startEchoOrigin, tempRegistry, until } from '../testing/harness.js';
import { addRedirectorOptions, addServiceOptions, type RedirectorCliOptions } from './cli-options.js';
import { RedirectorMetrics } from './redirector-metrics.js';
import { VendorError } from './vendor-error.js';
import { runVendorCli, type VendorCliSpec, type VendorLogger, type VendorService } from './vendor-cli.js';
import { createVendorRedirector } from './vendor-redirector.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

afterEach(() => {
  vi.restoreAllMocks();
});

interface Line {
  readonly level: 'info' | 'error';
  readonly msg: string;
  readonly fields: Record<string, unknown>;
}

/** A logger that keeps its lines, as pino would print them. */
function recordingLogger(): VendorLogger & { readonly lines: Line[] } {
  const lines: Line[] = [];
  return {
    lines,
    info: (fields, msg) => lines.push({ level: 'info', msg, fields: fields as Record<string, unknown> }),
    error: (fields, msg) => lines.push({ level: 'error', msg, fields: fields as Record<string, unknown> }),
  };
}

/** What the command wrote to stderr while `run` ran. */
async function stderrOf<TValue>(run: () => Promise<TValue>): Promise<{ result: TValue; stderr: string }> {
  let stderr = '';
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  try {
    return { result: await run(), stderr };
  } finally {
    spy.mockRestore();
  }
}

class WordError extends VendorError<'ACME_BAD_WORD'> {
  override readonly name = 'WordError';
}

type AcmeOptions = RedirectorCliOptions & { readonly word?: string };

function acmeCli(argv: string[], start: VendorCliSpec<AcmeOptions>['start'], logger = recordingLogger()) {
  const program = addServiceOptions(addRedirectorOptions(new Command('acme'), { ports: '80' }).option('--word <word>', 'a word'))
    .configureOutput({ writeOut: () => undefined, writeErr: (text) => process.stderr.write(text) });
  return {
    logger,
    run: runVendorCli<AcmeOptions>({
      name: 'acme',
      program,
      argv,
      logger: () => logger,
      start,
      isUsageError: (error) => error instanceof WordError,
      readyFields: ({ options }) => ({ word: options.word }),
    }),
  };
}

const idle = (overrides: Partial<VendorService> = {}): VendorService => ({
  events$: NEVER,
  registry: new Registry(),
  listening: () => Promise.resolve({ address: '127.0.0.1', port: 1 }),
  close: () => Promise.resolve(),
  ...overrides,
});

describe('the vendor CLI main loop', () => {
  it('exits 0 for --help and 2 for a missing required option, without starting anything', async () => {
    const start = vi.fn(() => idle());
    expect(await acmeCli(['--help'], start).run).toBe(0);
    const { result, stderr } = await stderrOf(() => acmeCli(['--priority', '1'], start).run);
    expect(result).toBe(2);
    expect(stderr).toContain("required option '--id <id>' not specified");
    expect(start).not.toHaveBeenCalled();
  });

  it('exits 2 for a bad port list, naming the part at fault', async () => {
    const { result, stderr } = await stderrOf(() => acmeCli(['--id', 'a', '--priority', '1', '--ports', '80,x'], () => idle()).run);

    expect(result).toBe(2);
    expect(stderr).toBe("acme: 'x' is not a port or a range\n");
  });

  it('exits 2 for a vendor usage error or invalid redirector options, 1 for anything else start throws', async () => {
    const usage = await stderrOf(() =>
      acmeCli(['--id', 'a', '--priority', '1'], () => {
        throw new WordError('ACME_BAD_WORD', 'the word is empty');
      }).run,
    );
    expect(usage).toEqual({ result: 2, stderr: 'acme: the word is empty\n' });
    const invalid = await stderrOf(() =>
      acmeCli(['--id', 'Not-An-Id', '--priority', '1'], ({ settings }) => {
        createVendorRedirector({ options: settings.redirector, defaultMatch: {}, onAccepted: () => undefined });
        return idle();
      }).run,
    );
    expect(invalid.result).toBe(2);
    expect(invalid.stderr).toMatch(/^acme: .*Not-An-Id/);
    const other = await stderrOf(() =>
      acmeCli(['--id', 'a', '--priority', '1'], () => {
        throw new Error('disk full');
      }).run,
    );
    expect(other).toEqual({ result: 1, stderr: 'acme: disk full\n' });
  });

  it('exits 1 when the service cannot start, logging why', async () => {
    const { run, logger } = acmeCli(['--id', 'a', '--priority', '1'], () => idle({ listening: () => Promise.reject(new Error('no such backend here')) }));

    expect(await run).toBe(1);
    expect(logger.lines).toEqual([{ level: 'error', msg: 'could not start', fields: { err: new Error('no such backend here') } }]);
  });

  it('exits 1 when the metrics port cannot be bound, and closes the service it had started', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const { port } = taken.address() as net.AddressInfo;
    let closed = 0;
    try {
      const { run, logger } = acmeCli(['--id', 'a', '--priority', '1', '--metrics', `127.0.0.1:${port}`], () => idle({ close: () => Promise.resolve(void closed++) }));
      const { result, stderr } = await stderrOf(() => run);
      expect(result).toBe(1);
      expect(stderr).toContain('EADDRINUSE');
      expect(closed).toBe(1);
      expect(logger.lines.map((line) => line.msg)).toEqual(['could not start']);
    } finally {
      taken.close();
    }
  });

  it('serves metrics on a free port for --metrics host:0 and names the port bound in the ready line', async () => {
    const registry = new Registry();
    new Gauge({ name: 'acme_up', help: 'whether acme serves', registers: [registry] }).set(1);
    const { run, logger } = acmeCli(['--id', 'a', '--priority', '1', '--metrics', '127.0.0.1:0'], () => idle({ registry }));
    await until(() => logger.lines.some((line) => line.msg === 'ready'), 5000, 'ready');
    const ready = logger.lines.find((line) => line.msg === 'ready');
    const metrics = ready?.fields.metrics as { host: string; port: number } | undefined;
    expect(metrics?.host).toBe('127.0.0.1');
    expect(metrics?.port).toBeGreaterThan(0);

    // What the line names is where an operator scrapes.
    const scraped = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: metrics?.port, path: '/metrics' }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
          res.once('end', () => resolve({ status: res.statusCode ?? 0, body }));
        })
        .once('error', reject);
    });
    expect(scraped).toMatchObject({ status: 200, body: expect.stringContaining('acme_up 1') as unknown });
    process.emit('SIGTERM', 'SIGTERM');
    expect(await run).toBe(0);
  });

  it('exits 1 when the service stops by itself after it started', async () => {
    const failures = new Subject<never>();
    const { run, logger } = acmeCli(['--id', 'a', '--priority', '1'], () => idle({ failures$: failures }));
    await until(() => logger.lines.some((line) => line.msg === 'ready'), 5000, 'ready');

    failures.error(new Error('listener lost'));

    expect(await run).toBe(1);
    expect(logger.lines.at(-1)).toEqual({ level: 'error', msg: 'the proxy stopped', fields: { err: new Error('listener lost') } });
  });

  it('exits 1 when close fails after a signal', async () => {
    const { run, logger } = acmeCli(['--id', 'a', '--priority', '1'], () => idle({ close: () => Promise.reject(new Error('stuck')) }));
    await until(() => logger.lines.some((line) => line.msg === 'ready'), 5000, 'ready');

    process.emit('SIGINT', 'SIGINT');

    expect(await run).toBe(1);
    expect(logger.lines.map((line) => line.msg)).toEqual(['ready', 'shutting down', 'close failed']);
  });

  it('serves a real vendor: logs ready and one accepted line per connection, and exits 0 on SIGTERM with its rule removed', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const id = uniqueId('cli');
    const signalListeners = process.listenerCount('SIGTERM');
    let closedBy: string | undefined;
    const { run, logger } = acmeCli(['--id', id, '--priority', '3', '--ports', String(origin.port), '--word', 'secret'], ({ settings }) => {
      const metrics = new RedirectorMetrics({ prefix: 'acme' });
      const vendor = createVendorRedirector({
        options: { ...settings.redirector, registry: registry.path },
        defaultMatch: {},
        metrics,
        onAccepted: (conn) => void conn.connectOnward().then((upstream) => relay(conn.socket, upstream), () => conn.socket.destroy()),
      });
      return {
        events$: vendor.events$,
        registry: metrics.registry,
        listening: () => vendor.listening(),
        close: async () => {
          closedBy = 'the kit';
          await vendor.close();
        },
      };
    });
    await until(() => logger.lines.some((line) => line.msg === 'ready'), 5000, 'ready');
    expect(logger.lines[0]).toMatchObject({ msg: 'ready', fields: { backend: 'embedded', word: 'secret', listening: { address: '127.0.0.1' } } });
    expect(fs.readdirSync(registry.path)).toContain(`${id}.json`);

    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    const echoed = new Promise<string>((resolve) => {
      let text = '';
      socket.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
      socket.once('end', () => resolve(text));
    });
    socket.end('hello');
    expect(await echoed).toBe('hello');
    await until(() => logger.lines.some((line) => line.msg === 'accepted'), 5000, 'the accepted line');
    expect(logger.lines.find((line) => line.msg === 'accepted')?.fields).toMatchObject({
      state: 'NotRedirected',
      redirectedBy: [id],
      destination: { port: origin.port },
      source: { address: '127.0.0.1' },
    });
    // Only a UDP flow's line names its transport (coproxy-tls's QUIC kernel test reads one).
    expect(logger.lines.find((line) => line.msg === 'accepted')?.fields).not.toHaveProperty('transport');

    process.emit('SIGTERM', 'SIGTERM');

    expect(await run).toBe(0);
    expect(closedBy).toBe('the kit');
    expect(logger.lines.at(-1)).toEqual({ level: 'info', msg: 'shutting down', fields: { signal: 'SIGTERM' } });
    expect(process.listenerCount('SIGTERM')).toBe(signalListeners);
    expect(fs.readdirSync(registry.path).filter((name) => name.endsWith('.json'))).toEqual([]);
  });
});
