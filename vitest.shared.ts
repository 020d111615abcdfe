// The vitest configuration every package shares: each package's vitest.config.ts is
// `export default packageTestConfig()`, with overrides only where that package differs.
//
// This file is also the packages' global setup (vitest calls its `setup` export once per
// run, in the main process): the multi-process tests fork fixtures and CLIs that import the
// built package (dist/), so dist is rebuilt first when any source file is newer, and a
// plain `vitest run` never tests yesterday's build.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type ViteUserConfig, defineConfig, mergeConfig } from 'vitest/config';
import type { TestProject } from 'vitest/node';

/** The vitest config of one package (run from its folder); `overrides` are merged over the shared defaults. */
export function packageTestConfig(overrides: ViteUserConfig = {}): ViteUserConfig {
  const shared = defineConfig({
    test: {
      include: ['src/**/*.test.ts'],
      globalSetup: [fileURLToPath(import.meta.url)],
      testTimeout: 30_000,
      hookTimeout: 30_000,
    },
  });
  return mergeConfig(shared, overrides);
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ts') || entry.name.endsWith('.test.ts')) continue;
    newest = Math.max(newest, fs.statSync(path.join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

interface PackageJson {
  exports?: Record<string, { default?: string } | undefined>;
  bin?: Record<string, string>;
}

/** What the build writes that the tests run: the package's library entry, or its CLI when it has no library. */
function builtEntry(root: string): string {
  const manifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as PackageJson;
  const entry = manifest.exports?.['.']?.default ?? Object.values(manifest.bin ?? {})[0];
  if (entry === undefined) throw new Error(`${root}/package.json names neither exports['.'] nor a bin: nothing tells whether dist is built`);
  return path.join(root, entry);
}

/** vitest's global setup: rebuild the package under test when its dist is older than its sources. */
export function setup(project: TestProject): void {
  const root = project.config.root;
  const built = builtEntry(root);
  const builtAt = fs.existsSync(built) ? fs.statSync(built).mtimeMs : 0;
  if (newestMtime(path.join(root, 'src')) <= builtAt) return;
  execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    cwd: root,
    stdio: 'inherit',
  });
}
