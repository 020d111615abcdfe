import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestCase } from './differential/cases.js';
import { Differential } from './differential/differential.js';
import { nginxBinary } from './differential/origins.js';

/**
 * The differential proof (issue #14), bounded for CI: seeded cases through a real
 * coproxy-http to Node's http.Server and nginx, each its own process. `pnpm fuzz` runs the
 * same comparison on 100,000 cases. nginx comes from Debian's nginx-light (.ci/run installs it).
 */
const RUNS = Number(process.env.DIFFERENTIAL_RUNS ?? 300);

describe('the differential proof: what the inspectors see is what real origins parse', () => {
  let differential: Differential;
  beforeAll(async () => {
    if (nginxBinary() === undefined) throw new Error('nginx is missing: apt-get install nginx-light (.ci/run does)');
    differential = await Differential.start();
  });
  afterAll(async () => {
    await differential?.[Symbol.asyncDispose]();
  });

  it(`agrees with Node and nginx on ${RUNS} generated requests`, async () => {
    let actedOnByNode = 0;
    let actedOnByNginx = 0;
    await fc.assert(
      fc.asyncProperty(requestCase, async (c) => {
        const outcome = await differential.run(c);
        actedOnByNode += outcome.actedOn.node;
        actedOnByNginx += outcome.actedOn.nginx;
        expect(outcome.divergences).toEqual([]);
      }),
      { numRuns: RUNS, seed: 20261214 },
    );
    // A proof where nothing reached the origins would prove nothing.
    expect(actedOnByNode).toBeGreaterThan(RUNS / 8);
    expect(actedOnByNginx).toBeGreaterThan(RUNS / 8);
  }, 120_000);
});
