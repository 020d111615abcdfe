import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { BACKEND_NAMES as PUBLIC_BACKEND_NAMES, DEFAULT_BACKEND as PUBLIC_DEFAULT_BACKEND } from '../index.js';
import { InvalidOptionsError } from '../model/errors.js';
import type { Destination } from '../model/match-rule.js';
import { RedirectRecords } from '../model/redirect-records.js';
import { dial } from '../net/dial.js';
import { createRedirector } from '../redirector/redirector.js';
import type { RedirectorEvent } from '../redirector/redirector-events.js';
import { type Acceptance, exchange, passThrough, startEchoOrigin, until } from '../testing/harness.js';
import { type Backend, type OnwardRecords, defineBackend } from './backend.js';
import { BACKEND_NAMES, type BackendName, DEFAULT_BACKEND, registerBackend } from './backend-registry.js';

// What a new backend writes, and all it writes: the stub below stands for a backend's
// folder (a redirect layer that tells its listener each flow's original destination), and
// `registerBackend` for its one line in the registry's list. Nothing in redirector/ changes.

/** Where the stub's "redirect layer" says every flow it redirects was going. */
let redirectedFrom: Destination | undefined;
const onwardLegs: OnwardRecords[] = [];
let uninstalls = 0;

const stubBackend: Backend = {
  name: 'stub',
  install: (spec, sink) =>
    new Promise((resolve, reject) => {
      const server = net.createServer({ allowHalfOpen: true }, (socket) => {
        const destination = redirectedFrom!;
        sink.accepted({
          socket,
          originalDestination: destination,
          source: { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 },
          records: RedirectRecords.empty.withRedirect(spec.id),
          context: undefined,
          framingBytes: 0,
          connectOnward: (onward, { timeoutMs }) => {
            onwardLegs.push(onward);
            return dial({ host: destination.address, port: destination.port, allowHalfOpen: true, timeoutMs });
          },
        });
      });
      server.once('error', reject);
      server.listen(spec.listen.port, spec.listen.host, () => {
        const { address, port } = server.address() as net.AddressInfo;
        resolve({
          listening: { address, port },
          uninstall: () => {
            uninstalls++;
            server.close();
          },
        });
      });
    }),
};

const stub = defineBackend({
  name: 'stub',
  specify(spec) {
    if (spec.priority < 0) throw new InvalidOptionsError('must be at least 0 on the stub backend', 'priority');
    return spec;
  },
  open: () => stubBackend,
});

registerBackend(stub);

// BackendName is derived from the registry's built-in list at build time; a backend
// registered at run time is a valid name to createRedirector but not a member of that union.
const STUB = 'stub' as BackendName;

let nextId = 0;
const uniqueId = (name: string): string => `${name}-${process.pid % 10000}-${++nextId}`;

describe('the backend registry', () => {
  it('runs a redirector on a backend that is only its definition and one registry call', async () => {
    await using origin = await startEchoOrigin();
    redirectedFrom = { address: '127.0.0.1', port: origin.port, family: 4 };
    const redirector = createRedirector({ id: uniqueId('stub-vendor'), priority: 5, match: { ports: [origin.port] }, backend: STUB });
    await using _redirector = redirector;
    const events: RedirectorEvent[] = [];
    redirector.events$.subscribe((event) => events.push(event));
    const log: Acceptance[] = [];
    const subscription = passThrough(redirector, log);
    const listening = await redirector.installed();

    const payload = randomBytes(64 * 1024);
    const socket = await dial({ host: listening.address, port: listening.port, allowHalfOpen: true });
    const reply = await exchange(socket, 'via-stub', payload);

    expect(redirector.backend).toBe('stub');
    expect(reply.subarray(reply.indexOf(0x0a) + 1).equals(payload)).toBe(true);
    expect(origin.received).toHaveLength(1);
    expect(log.map((a) => a.tag)).toEqual(['via-stub']);
    expect(log[0]!.connection.originalDestination).toEqual(redirectedFrom);
    expect(log[0]!.connection.records.redirectedBy).toEqual([redirector.id]);
    expect(onwardLegs.map((leg) => leg.kind)).toEqual(['propagate']);
    expect(events.find((event) => event.type === 'installed')).toMatchObject({ backend: 'stub', listening });

    subscription.unsubscribe();
    await until(() => uninstalls === 1, 5000, 'the stub uninstalled');
  });

  it("applies the new backend's own option checks, and only to it", async () => {
    expect(() => createRedirector({ id: uniqueId('stub-low'), priority: -1, backend: STUB })).toThrow(
      expect.objectContaining({ code: 'COPROXY_INVALID_OPTIONS', option: 'priority' }) as Error,
    );
    await using embedded = createRedirector({ id: uniqueId('embedded-low'), priority: -1 });
    expect(embedded.backend).toBe('embedded');
  });

  it('names every registered backend when it refuses an unknown one', () => {
    expect(() => createRedirector({ id: uniqueId('nope'), priority: 0, backend: 'nope' as BackendName })).toThrow(
      `must be 'embedded', 'nftables', 'wfp' or 'stub', got "nope"`,
    );
  });

  it('refuses a second backend of a name already registered', () => {
    expect(() => registerBackend({ ...stub, open: () => stubBackend })).toThrow(InvalidOptionsError);
    expect(() => registerBackend({ ...stub, name: 'nftables' })).toThrow(`a backend named 'nftables' is already registered`);
  });

  it("publishes the built-in names, the default first, through core's index", () => {
    expect(BACKEND_NAMES).toEqual(['embedded', 'nftables', 'wfp']);
    expect(DEFAULT_BACKEND).toBe('embedded');
    expect(PUBLIC_BACKEND_NAMES).toBe(BACKEND_NAMES);
    expect(PUBLIC_DEFAULT_BACKEND).toBe(DEFAULT_BACKEND);
    expect(Object.isFrozen(BACKEND_NAMES)).toBe(true);
  });
});
