/**
 * `pnpm fuzz`: the differential proof at scale. Case `i` is generated from seed
 * `seed + i` (`caseOfSeed`), sent through a real coproxy-http to Node's http.Server and to
 * nginx (separate processes), and what the inspectors were given is compared with what
 * each origin parsed (see differential.ts). Prints progress, then the count and every
 * diverging case with the seed that regenerates it; exits 1 if any diverged.
 *
 * ```sh
 * pnpm fuzz                                               # from the repo root: 100,000 cases
 * node dist/differential/fuzz.js --count 1000 --seed 7 --concurrency 16
 * node dist/differential/fuzz.js --seed 123456 --count 1  # one case again, printed
 * ```
 */
import { parseArgs } from 'node:util';
import { caseBytes, caseOfSeed } from './cases.js';
import { Differential } from './differential.js';

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: process.env.FUZZ_COUNT ?? '100000' },
    seed: { type: 'string', default: process.env.FUZZ_SEED ?? '1' },
    concurrency: { type: 'string', default: process.env.FUZZ_CONCURRENCY ?? '8' },
  },
});
const count = Number(values.count);
const firstSeed = Number(values.seed);
const concurrency = Number(values.concurrency);
if (!Number.isSafeInteger(count) || count < 1 || !Number.isSafeInteger(firstSeed) || !Number.isSafeInteger(concurrency) || concurrency < 1) {
  console.error('usage: fuzz [--count n>=1] [--seed integer] [--concurrency n>=1]');
  process.exit(2);
}

const started = Date.now();
await using differential = await Differential.start();
let next = 0;
let done = 0;
let inspected = 0;
let node = 0;
let nginx = 0;
let notActedOn = 0;
const notActedOnBy: Record<string, number> = {};
const diverging: number[] = [];

async function worker(): Promise<void> {
  while (next < count) {
    const seed = firstSeed + next++;
    const c = caseOfSeed(seed);
    const outcome = await differential.run(c);
    done++;
    inspected += outcome.inspected;
    node += outcome.actedOn.node;
    nginx += outcome.actedOn.nginx;
    notActedOn += outcome.notActedOn;
    for (const [key, n] of Object.entries(outcome.notActedOnBy)) notActedOnBy[key] = (notActedOnBy[key] ?? 0) + n;
    if (count === 1) console.log(`case ${seed}: ${JSON.stringify(caseBytes(c).toString('latin1'))}\n${JSON.stringify(outcome, null, 2)}`);
    if (outcome.divergences.length > 0) {
      diverging.push(seed);
      console.log(`DIVERGENCE seed=${seed} request=${JSON.stringify(caseBytes(c).toString('latin1'))}`);
      for (const d of outcome.divergences) console.log(`  ${d.origin} request #${d.index} ${d.field}: inspected ${JSON.stringify(d.inspected)}, origin parsed ${JSON.stringify(d.parsed)}`);
      console.log(`  again: pnpm fuzz --seed ${seed} --count 1`);
    }
    if (done % 5000 === 0) console.log(`${done} cases, ${inspected} requests inspected, acted on by node ${node} / nginx ${nginx}, ${diverging.length} diverging (${Math.round((Date.now() - started) / 1000)} s)`);
  }
}

await Promise.all(Array.from({ length: concurrency }, () => worker()));
const seconds = Math.round((Date.now() - started) / 1000);
console.log(
  `fuzz: ${done} cases (seeds ${firstSeed}..${firstSeed + count - 1}), ${inspected} requests inspected and forwarded, ` +
    `acted on by node ${node} and nginx ${nginx} (${notActedOn} refused by the origin or failed: ${JSON.stringify(notActedOnBy)}), ${diverging.length} diverging, ${seconds} s`,
);
if (diverging.length > 0) {
  console.log(`diverging seeds: ${diverging.join(' ')}`);
  process.exitCode = 1;
}
