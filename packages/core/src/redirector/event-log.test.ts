import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { connect } from '../backends/embedded/connect.js';
import { exchange, passThrough, startEchoOrigin, tempRegistry, until, type Acceptance } from '../testing/harness.js';
import { EVENT_LOG_ENV, type EventLogLine } from './event-log.js';
import { createRedirector } from './redirector.js';

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

const readLog = (file: string): EventLogLine[] =>
  fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line) as EventLogLine) : [];

afterEach(() => {
  delete process.env[EVENT_LOG_ENV];
});

describe('the event log (COPROXY_EVENT_LOG)', () => {
  it('writes one line per event of every redirector: installed, accepted with state and hops, closed with bytes, uninstalled', async () => {
    using registry = tempRegistry();
    const file = path.join(registry.path, '..', `${path.basename(registry.path)}-events.jsonl`);
    await using origin = await startEchoOrigin();
    process.env[EVENT_LOG_ENV] = file;
    const first = createRedirector({ id: uniqueId('log-a'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    const second = createRedirector({ id: uniqueId('log-b'), priority: 20, match: { ports: [origin.port] }, registry: registry.path });
    try {
      const log: Acceptance[] = [];
      const subscriptions = [passThrough(first, log), passThrough(second, log)];
      await Promise.all([first.installed(), second.installed()]);
      const payload = randomBytes(100_000);
      const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'one', payload);
      expect(reply.length).toBe(payload.length + 'FLOW one\n'.length);
      await until(() => readLog(file).filter((l) => l.event === 'closed').length === 2, 5000, 'two closed lines');
      for (const subscription of subscriptions) subscription.unsubscribe();
      await until(() => readLog(file).filter((l) => l.event === 'uninstalled').length === 2, 5000, 'two uninstalled lines');

      const lines = readLog(file).filter((l) => l.redirector.id === first.id || l.redirector.id === second.id);
      expect(lines.every((l) => l.v === 1 && l.pid === process.pid)).toBe(true);
      const installed = lines.filter((l) => l.event === 'installed');
      expect(installed.map((l) => [l.redirector.id, l.redirector.priority, l.redirector.backend])).toEqual(
        expect.arrayContaining([[first.id, 10, 'embedded'], [second.id, 20, 'embedded']]),
      );
      const accepted = lines.flatMap((l) => (l.event === 'accepted' ? [l] : []));
      expect(accepted.map((l) => [l.redirector.id, l.state, l.redirectedBy, l.hops, l.originalDestination.port])).toEqual([
        [first.id, 'NotRedirected', [first.id], 1, origin.port],
        [second.id, 'RedirectedByOther', [first.id, second.id], 2, origin.port],
      ]);
      expect(accepted[0]!.source.pid).toBe(process.pid);
      const closed = lines.flatMap((l) => (l.event === 'closed' ? [l] : []));
      for (const line of closed) {
        expect(accepted.map((a) => a.connectionId)).toContain(line.connectionId);
        expect(line.bytesFromClient).toBe(payload.length + 'FLOW one\n'.length);
        expect(line.bytesToClient).toBe(payload.length + 'FLOW one\n'.length);
      }
    } finally {
      await first.close();
      await second.close();
      fs.rmSync(file, { force: true });
    }
  });

  it('writes nothing when the variable is unset', async () => {
    using registry = tempRegistry();
    const redirector = createRedirector({ id: uniqueId('log-off'), priority: 10, match: { ports: [9] }, registry: registry.path });
    const write = vi.spyOn(fs, 'writeSync');
    try {
      const subscription = redirector.accepted$.subscribe();
      await redirector.installed();
      subscription.unsubscribe();
      expect(write.mock.calls.filter(([, text]) => typeof text === 'string' && text.includes('"event"'))).toEqual([]);
    } finally {
      write.mockRestore();
      await redirector.close();
    }
  });

  it('starts the redirector without a log, with a warning, when the log cannot be opened', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const missing = path.join(registry.path, 'no-such-directory', 'events.jsonl');
    process.env[EVENT_LOG_ENV] = missing;
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning.message);
    process.on('warning', onWarning);
    const redirector = createRedirector({ id: uniqueId('log-unopened'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    try {
      const log: Acceptance[] = [];
      const subscription = passThrough(redirector, log);
      await redirector.installed();
      const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'three', Buffer.from('hello'));
      expect(reply.toString()).toBe('FLOW three\nhello');
      await until(() => warnings.length > 0, 5000, 'a warning');
      expect(warnings[0]).toMatch(/^COPROXY_EVENT_LOG: cannot open .*no-such-directory.*, no event log: ENOENT/);
      expect(fs.existsSync(missing)).toBe(false);
      subscription.unsubscribe();
    } finally {
      process.off('warning', onWarning);
      await redirector.close();
    }
  });

  it('stops the log with a warning, not the redirector, when the log cannot be written', async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    // A descriptor number no test process has open: every write fails with EBADF.
    process.env[EVENT_LOG_ENV] = 'fd:1023';
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => void warnings.push(warning.message);
    process.on('warning', onWarning);
    const redirector = createRedirector({ id: uniqueId('log-bad'), priority: 10, match: { ports: [origin.port] }, registry: registry.path });
    try {
      const log: Acceptance[] = [];
      const subscription = passThrough(redirector, log);
      await redirector.installed();
      const reply = await exchange(await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path }), 'two', Buffer.from('hello'));
      expect(reply.toString()).toBe('FLOW two\nhello');
      expect(log).toHaveLength(1);
      await until(() => warnings.length > 0, 5000, 'a warning');
      expect(warnings[0]).toMatch(/COPROXY_EVENT_LOG: cannot write to fd:1023, event log stopped/);
      subscription.unsubscribe();
    } finally {
      process.off('warning', onWarning);
      await redirector.close();
    }
  });
});
