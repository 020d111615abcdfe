// The coproxy-tls CLI as a child process inside a test's network namespace, its JSON log
// lines parsed as they come (for kernel tests). Not part of the build.
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Netns } from '@coproxy/core/testing';
import type { Handshake, TlsExchange } from '../events.js';

/** The built CLI: vitest's global setup rebuilds dist/ when it is stale. */
export const CLI_PATH = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

/** One JSON line the CLI logged (pino). */
export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly listening?: { readonly address: string; readonly port: number };
  readonly handshake?: Handshake;
  readonly exchange?: TlsExchange;
  readonly connectionId?: string;
  readonly code?: string;
}

export interface CliProcess {
  readonly child: ChildProcess;
  /** Every stdout line, parsed, in order. */
  readonly lines: LogLine[];
  /** stdout lines that were not JSON (logs are JSON lines only: a test asserts this is empty). */
  readonly garbage: string[];
  /** The listener, from the CLI's `ready` line; rejects if it exits first or within 30 s (a loaded 2-core CI machine starts Node slowly). */
  readonly ready: Promise<{ address: string; port: number }>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  handshakes(): Handshake[];
  exchanges(): TlsExchange[];
  /** What it wrote on stderr so far. */
  stderr(): string;
}

export function within<TValue>(promise: Promise<TValue>, timeoutMs: number, what: string): Promise<TValue> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function until(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

export function startCli(netns: Netns, args: readonly string[]): CliProcess {
  const child = netns.spawn(process.execPath, [CLI_PATH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: LogLine[] = [];
  const garbage: string[] = [];
  let stderr = '';
  let partial = '';
  let onLine: ((line: LogLine) => void) | undefined;
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout?.on('data', (chunk: Buffer) => {
    const complete = (partial + chunk.toString()).split('\n');
    partial = complete.pop() ?? '';
    for (const raw of complete) {
      let line: LogLine;
      try {
        line = JSON.parse(raw) as LogLine;
      } catch {
        garbage.push(raw);
        continue;
      }
      lines.push(line);
      onLine?.(line);
    }
  });
  // 'close', not 'exit': 'exit' may come before the last stdout lines are read (a test then
  // misses the 'shutting down' line, or a stderr it reports).
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal })),
  );
  const ready = new Promise<{ address: string; port: number }>((resolve, reject) => {
    onLine = (line) => {
      if (line.msg === 'ready' && line.listening !== undefined) resolve(line.listening);
    };
    void exited.then(({ code, signal }) => reject(new Error(`the CLI exited before it was ready (${String(code ?? signal)}): ${stderr.trim()}`)));
  });
  const logged = <TKey extends 'handshake' | 'exchange'>(key: TKey): NonNullable<LogLine[TKey]>[] =>
    lines.flatMap((line) => (line.msg === key && line[key] !== undefined ? [line[key] as NonNullable<LogLine[TKey]>] : []));
  return {
    child,
    lines,
    garbage,
    ready: within(ready, 30_000, 'the CLI to be ready'),
    exited,
    handshakes: () => logged('handshake'),
    exchanges: () => logged('exchange'),
    stderr: () => stderr,
  };
}
