import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import readline from 'node:readline';

/** Resolves when the process exits, with its code or signal; at once if it already has. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** Waits for the process to exit on its own; SIGKILL once `timeoutMs` has passed (a load run that overruns). */
export async function exitedWithin(child: ChildProcess, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return await exited(child);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `signal` (SIGTERM unless told: a bench's child closes what it holds and exits), then
 * SIGKILL once `graceMs` has passed; resolves when the process has exited.
 */
export function stopProcess(child: ChildProcess, graceMs = 5000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

/**
 * Polls `check` every 100 ms until it returns true; rejects after `timeoutMs`, or at once
 * when `child` exits first (its log says why). A check that throws (its command fails
 * until the service is up) counts as not yet.
 */
export async function waitUntil(what: string, check: () => boolean, timeoutMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child !== undefined && (child.exitCode !== null || child.signalCode !== null)) {
      throw new Error(`${what}: the process exited (${String(child.exitCode ?? child.signalCode)}) before it was ready`);
    }
    if (attempt(check)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function attempt(check: () => boolean): boolean {
  try {
    return check();
  } catch {
    return false;
  }
}

export interface Memory {
  /** Peak resident set since the process started, KiB. */
  readonly hwmKiB: number;
  readonly rssKiB: number;
}

/** A live process's resident set (now and at its peak), from `/proc/PID/status` (Linux only). */
export function readMemory(pid: number): Memory {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { hwmKiB: field('VmHWM'), rssKiB: field('VmRSS') };
}

/** A piped child's stdout and stderr as text, as far as they have come. */
export interface CapturedOutput {
  readonly stdout: string;
  readonly stderr: string;
}

/** Collects what a child spawned with piped stdout and stderr writes there. */
export function captureOutput(child: ChildProcess): CapturedOutput {
  const output = { stdout: '', stderr: '' };
  child.stdout?.on('data', (chunk: Buffer) => (output.stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output.stderr += chunk.toString()));
  return output;
}

/**
 * The first line the child writes on its (piped) stdout: its ready line or its report.
 * Rejects when the child exits (and its output has ended) first (with its stderr, trimmed) or when `timeoutMs` has
 * passed, then killing it with SIGKILL. `what` names the child in those errors.
 */
export function firstLine(child: ChildProcess, what: string, timeoutMs: number): Promise<string> {
  const stdout = child.stdout;
  if (stdout === null) return Promise.reject(new Error(`${what}: its stdout is not piped`));
  let stderr = '';
  const onStderr = (chunk: Buffer): void => void (stderr += chunk.toString());
  child.stderr?.on('data', onStderr);
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: stdout });
    // The interface stays open: closing it would pause stdout, and a chatty child would block.
    const finish = (): void => {
      clearTimeout(timer);
      child.off('close', onExit);
      child.stderr?.off('data', onStderr);
    };
    const timer = setTimeout(() => {
      finish();
      child.kill('SIGKILL');
      reject(new Error(`${what}: not done within ${timeoutMs} ms`));
    }, timeoutMs);
    const onExit = (code: number | null): void => {
      finish();
      reject(new Error(`${what} exited with ${String(code)}: ${stderr.trim()}`));
    };
    lines.once('line', (line) => {
      finish();
      resolve(line);
    });
    // 'close', not 'exit': at 'exit' the pipes may still hold the child's line or its stderr
    // (a client that prints its report and exits would be taken for one that said nothing).
    child.once('close', onExit);
  });
}
