import fs from 'node:fs';
import path from 'node:path';
import type { ProfileSummary } from './results.js';

/** The parts of V8's `.cpuprofile` format (what `node --cpu-prof` writes) read here. */
interface CpuProfile {
  readonly nodes: readonly { readonly id: number; readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number } }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Self time per function of every profile under `dir`, top `count` each. */
export function summarizeProfiles(dir: string, vendor: string, count = 15): ProfileSummary[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((name) => name.endsWith('.cpuprofile'))
    .map((name) => summarize(path.join(dir, name), vendor, count));
}

function summarize(file: string, vendor: string, count: number): ProfileSummary {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const delta = profile.timeDeltas[i] ?? 0;
    total += delta;
    const frame = frames.get(id);
    const key = frame === undefined ? '(unknown)' : `${frame.functionName || '(anonymous)'} ${shortUrl(frame.url)}${frame.url === '' ? '' : `:${frame.lineNumber + 1}`}`;
    self.set(key, (self.get(key) ?? 0) + delta);
  });
  const share = (key: string): number => (total === 0 ? 0 : (self.get(key) ?? 0) / total);
  const top = [...self]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([fn]) => ({ fn, share: share(fn) }));
  return { vendor, file, samplesMs: total / 1000, top, idleShare: share('(idle) '), gcShare: share('(garbage collector) ') };
}

/** node:… stays; a package file is named by its package; a workspace file by its path in the repo. */
function shortUrl(url: string): string {
  const pkg = /node_modules\/(?:\.pnpm\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(url);
  if (pkg !== null) return `${pkg[1]}/${pkg[2]}`;
  const workspace = /\/packages\/(.*)$/.exec(url);
  if (workspace !== null) return workspace[1]!;
  return url;
}
