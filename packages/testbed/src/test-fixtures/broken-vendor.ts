#!/usr/bin/env node
/**
 * A deliberately broken vendor, for the conformance kit's own tests: a pass-through relay on
 * core's vendor kit that breaks one rule, chosen with `--break`:
 *
 * - `drop-records`: opens its onward connections without the flow's redirect records, so
 *   the redirect layer sends them back to it (or to an earlier vendor): a loop;
 * - `alter-bytes`: flips one bit of the byte at offset 200 of what the client sends, which
 *   no inspector's verdict asked for (I3).
 *
 * `coproxy-testbed conformance --vendor 'node dist/test-fixtures/broken-vendor.js --break … --id {id} …'`
 * must fail it with a verdict naming the check and the flow.
 */
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type AcceptedConnection, relay } from '@coproxy/core';
import { type RedirectorCliOptions, RedirectorMetrics, addRedirectorOptions, addServiceOptions, createVendorRedirector, exitWith, runVendorCli } from '@coproxy/core/vendor';
import { Command, Option } from 'commander';

type Breakage = 'drop-records' | 'alter-bytes';
interface CliOptions extends RedirectorCliOptions {
  readonly break: Breakage;
}

const program = addRedirectorOptions(new Command('broken-vendor'), { ports: '80' }).addOption(
  new Option('--break <how>', 'the rule to break').choices(['drop-records', 'alter-bytes']).makeOptionMandatory(),
);
addServiceOptions(program);

/** Flips the lowest bit of the byte at `offset` of the stream. */
function flipAt(offset: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      if (seen <= offset && offset < seen + chunk.length) {
        const copy = Buffer.from(chunk);
        copy[offset - seen]! ^= 1;
        chunk = copy;
      }
      seen += chunk.length;
      done(null, chunk);
    },
  });
}

async function pass(conn: AcceptedConnection, how: Breakage): Promise<void> {
  const upstream = await conn.connectOnward({ propagateRecords: how !== 'drop-records' }).catch(() => undefined);
  if (upstream === undefined) return void conn.socket.destroy();
  if (how === 'drop-records') return void (await relay(conn.socket, upstream));
  // alter-bytes: client → origin through the flipping transform, origin → client as is.
  await Promise.allSettled([pipeline(conn.socket, flipAt(200), upstream), pipeline(upstream, conn.socket)]);
}

const stderrLogger = {
  info: (): void => undefined,
  error: (fields: object, message: string): void => void process.stderr.write(`${JSON.stringify({ ...fields, msg: message })}\n`),
};

exitWith(
  'broken-vendor',
  runVendorCli<CliOptions>({
    name: 'broken-vendor',
    program,
    logger: () => stderrLogger,
    start: ({ options, settings }) => {
      const metrics = new RedirectorMetrics({ prefix: 'broken_vendor' });
      const vendor = createVendorRedirector({ options: settings.redirector, defaultMatch: { ports: [80] }, metrics, onAccepted: (conn) => void pass(conn, options.break) });
      return { events$: vendor.events$, registry: metrics.registry, listening: () => vendor.listening(), close: () => vendor.close() };
    },
  }),
);
