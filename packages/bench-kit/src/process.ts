import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/** Resolves when the process exits, with its code or signal; at once if it already has. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
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
