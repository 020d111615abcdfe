// In a file of its own: the records-full warning is emitted once per process, and vitest
// runs each test file in a fresh one.
import { randomBytes } from 'node:crypto';
import { describe, expect, it, vi } from 'vitest';
import { MAX_REDIRECTS } from '../../model/redirect-records.js';
import { createRedirector } from '../../redirector/redirector.js';
import { exchange, passThrough, sha256, startEchoOrigin, tempRegistry, until, type Acceptance } from '../../testing/harness.js';
import { connect } from './connect.js';

describe('a flow that meets more redirectors than its records can hold', () => {
  it(`is inspected by the first ${MAX_REDIRECTS}, then reaches the origin intact with a CoproxyRecordsFullWarning`, async () => {
    using registry = tempRegistry();
    await using origin = await startEchoOrigin();
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const ids = Array.from({ length: MAX_REDIRECTS + 1 }, (_, i) => `r${String(i).padStart(2, '0')}`);
    // The last one is fail-closed: being skipped past the bound must not count as unavailable.
    const redirectors = ids.map((id, priority) =>
      createRedirector({
        id, priority, match: { ports: [origin.port] }, registry: registry.path, failMode: priority === MAX_REDIRECTS ? 'closed' : 'open',
      }),
    );
    const log: Acceptance[] = [];
    const subscriptions = redirectors.map((r) => passThrough(r, log));
    await Promise.all(redirectors.map((r) => r.installed()));

    const payload = randomBytes(64 * 1024);
    const socket = await connect({ host: '127.0.0.1', port: origin.port, registry: registry.path });
    const reply = await exchange(socket, 'full', payload);

    const expected = Buffer.concat([Buffer.from('FLOW full\n'), payload]);
    await until(() => origin.received.length === 1, 5000, 'the origin to see the flow end');
    expect(sha256(origin.received[0]!)).toBe(sha256(expected));
    expect(sha256(reply)).toBe(sha256(expected));
    expect(log.map((a) => a.redirectorId)).toEqual(ids.slice(0, MAX_REDIRECTS)); // r00..r15; r16 is skipped
    expect(log[MAX_REDIRECTS - 1]!.connection.records.hops).toBe(MAX_REDIRECTS);
    expect(warn).toHaveBeenCalledWith(expect.stringContaining("'r16'"), 'CoproxyRecordsFullWarning');
    warn.mockRestore();
    subscriptions.forEach((s) => s.unsubscribe());
    await Promise.all(redirectors.map((r) => r.close()));
  });
});
