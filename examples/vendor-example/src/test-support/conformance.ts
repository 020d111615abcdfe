import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));
/** The testbed's published command, as a vendor's own CI would run it. */
const testbedCli = path.join(path.dirname(createRequire(import.meta.url).resolve('@coproxy/testbed/package.json')), 'dist/cli.js');

/** What the README's "prove it" line passes to `--vendor`: the word filter with the testbed's parameters. */
export const WORD_FILTER_COMMAND = `${process.execPath} ${cli} --id {id} --priority {priority} --ports {ports} --backend {backend} --fail-mode {failMode} --word forbidden`;

export interface ConformanceRun {
  readonly code: number;
  readonly stdout: string;
  readonly report: { readonly version: number; readonly passed: boolean; readonly checks: readonly { readonly name: string; readonly passed: boolean; readonly reason: string }[] };
}

/** `coproxy-testbed conformance --vendor … --json …`; resolves with the exit code, the output and the JSON report. */
export async function conformance(backend: 'embedded' | 'nftables'): Promise<ConformanceRun> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'word-filter-conformance-'));
  const json = path.join(dir, 'report.json');
  try {
    let code = 0;
    let stdout: string;
    try {
      ({ stdout } = await run(process.execPath, [testbedCli, 'conformance', '--vendor', WORD_FILTER_COMMAND, '--backend', backend, '--json', json], { timeout: 170_000, maxBuffer: 16 << 20 }));
    } catch (error) {
      const failed = error as { code?: number | string; stdout?: string; stderr?: string };
      if (typeof failed.code !== 'number') throw error;
      code = failed.code;
      stdout = `${failed.stdout ?? ''}${failed.stderr ?? ''}`;
    }
    return { code, stdout, report: JSON.parse(fs.readFileSync(json, 'utf8')) as ConformanceRun['report'] };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
