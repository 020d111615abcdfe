import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { ConformanceReport } from '../conformance.js';

const run = promisify(execFile);
const cli = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

/** `coproxy-testbed conformance --vendor KIND --backend BACKEND --json …`, as a user runs it; never throws on a non-zero exit. */
export async function conformanceOf(kind: 'tls' | 'http', backend: 'embedded' | 'nftables', dir: string): Promise<{ code: number; stdout: string; report: ConformanceReport }> {
  const json = path.join(dir, `${kind}-${backend}.json`);
  let code = 0;
  let stdout: string;
  try {
    ({ stdout } = await run(process.execPath, [cli, 'conformance', '--vendor', kind, '--backend', backend, '--json', json], { timeout: 170_000, maxBuffer: 16 << 20 }));
  } catch (error) {
    const failed = error as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    code = failed.code;
    stdout = `${failed.stdout ?? ''}${failed.stderr ?? ''}`;
  }
  return { code, stdout, report: JSON.parse(fs.readFileSync(json, 'utf8')) as ConformanceReport };
}
