import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { printProfileSummary } from './cpu-profile.js';

const dirs: string[] = [];
afterEach(() => {
  vi.restoreAllMocks();
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe('CPU profile summary', () => {
  it('shares busy time out by place and by function, leaving idle time out', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-kit-profile-'));
    dirs.push(dir);
    const file = path.join(dir, 'proxy.cpuprofile');
    const frame = (id: number, functionName: string, url: string, lineNumber = 0): object => ({ id, callFrame: { functionName, url, lineNumber } });
    fs.writeFileSync(
      file,
      JSON.stringify({
        nodes: [
          frame(1, '(idle)', ''),
          frame(2, 'writeGeneric', 'node:internal/stream_base_commons', 9),
          frame(3, 'parse', 'file:///repo/packages/proxy-http/dist/parser.js', 41),
          frame(4, '', 'file:///repo/node_modules/.pnpm/pino@10.4.0/node_modules/pino/lib/tools.js', 2),
          frame(5, 'writev', ''),
        ],
        samples: [1, 2, 3, 3, 4, 5, 1],
        timeDeltas: [500_000, 100_000, 200_000, 200_000, 50_000, 50_000, 500_000],
      }),
    );
    const lines: string[] = [];
    vi.spyOn(console, 'log').mockImplementation((line: string) => void lines.push(line));
    printProfileSummary(file, { title: 'proxy', notes: ['  a note'], top: 2, nativeLabel: 'native', nodeLabel: 'node internals' });
    expect(lines).toEqual([
      'proxy: 1.60 s sampled, 0.60 s busy (percentages of busy time)',
      '  a note',
      '  self time by place:',
      '     66.7%  @coproxy/proxy-http',
      '     16.7%  node internals',
      '      8.3%  pino',
      '      8.3%  native',
      '  top 2 functions by self time:',
      '     66.7%  parse @coproxy/proxy-http/dist/parser.js:42',
      '     16.7%  writeGeneric node:internal/stream_base_commons:10',
    ]);
  });
});
