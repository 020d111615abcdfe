import fs from 'node:fs';

/** The parts of V8's `.cpuprofile` format (what `node --cpu-prof` writes) read here. */
interface CpuProfile {
  readonly nodes: readonly { readonly id: number; readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number } }[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface ProfilePrintOptions {
  /** The first line's subject: `proxy profile FILE`, or the file's name. */
  readonly title: string;
  /** Lines printed under the first, as they are. */
  readonly notes?: readonly string[];
  /** How many functions to list. */
  readonly top: number;
  /** The place of frames without a URL that are not V8's own `(…)` entries. */
  readonly nativeLabel: string;
  /** The place of `node:` frames. */
  readonly nodeLabel: string;
}

/**
 * Prints self time by place (node internals, each package, this repo's packages) and by
 * function, as percentages of the busy (non-idle) time of a `node --cpu-prof` profile.
 */
export function printProfileSummary(file: string, options: ProfilePrintOptions): void {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byNode = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const byFunction = new Map<string, number>();
  const byPlace = new Map<string, number>();
  let total = 0;
  let idle = 0;
  profile.samples.forEach((id, index) => {
    const micros = profile.timeDeltas[index] ?? 0;
    const frame = byNode.get(id);
    total += micros;
    if (frame === undefined || frame.functionName === '(idle)') {
      idle += micros;
      return;
    }
    const where = frame.url === '' ? '' : ` ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
    const key = `${frame.functionName === '' ? '(anonymous)' : frame.functionName}${where}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + micros);
    const place = placeOf(frame.url, frame.functionName, options);
    byPlace.set(place, (byPlace.get(place) ?? 0) + micros);
  });
  const busy = total - idle;
  const percent = (micros: number): string => `${((100 * micros) / busy).toFixed(1).padStart(5)}%`;
  console.log(`${options.title}: ${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy (percentages of busy time)`);
  for (const note of options.notes ?? []) console.log(note);
  console.log('  self time by place:');
  for (const [place, micros] of [...byPlace].sort((a, b) => b[1] - a[1])) console.log(`    ${percent(micros)}  ${place}`);
  console.log(`  top ${options.top} functions by self time:`);
  for (const [key, micros] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, options.top)) console.log(`    ${percent(micros)}  ${key}`);
}

/** A package file by its package, a workspace file as `@coproxy/PACKAGE/path`. */
function shortUrl(url: string): string {
  const local = url.replace(/^file:\/\//, '');
  const pkg = /node_modules\/(?:\.pnpm\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(local);
  if (pkg !== null) return `${pkg[1]}/${pkg[2]}`;
  const repo = /packages\/([^/]+)\/(.*)$/.exec(local);
  return repo === null ? local : `@coproxy/${repo[1]}/${repo[2]}`;
}

function placeOf(url: string, functionName: string, options: ProfilePrintOptions): string {
  if (url === '') return functionName.startsWith('(') ? functionName : options.nativeLabel;
  if (url.startsWith('node:')) return options.nodeLabel;
  const pkg = /node_modules\/(?:\.pnpm\/[^/]+\/node_modules\/)?((?:@[^/]+\/)?[^/]+)\//.exec(url);
  if (pkg?.[1] !== undefined) return pkg[1];
  const repo = /packages\/([^/]+)\//.exec(url);
  return repo?.[1] === undefined ? url : `@coproxy/${repo[1]}`;
}
