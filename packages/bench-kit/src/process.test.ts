import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { exited, readMemory, stopProcess, waitUntil } from './process.js';

/** A node process that ignores SIGTERM, and says so on stdout once its handler is set. */
function stubborn(): Promise<ReturnType<typeof spawn>> {
  const child = spawn(process.execPath, ['-e', "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000);"], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.stdout.once('data', () => resolve(child));
  });
}

describe('process helpers', () => {
  it('stops with SIGTERM a process that heeds it', async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    await stopProcess(child, 10_000);
    expect(child.signalCode).toBe('SIGTERM');
  });

  it('kills with SIGKILL a process that ignores SIGTERM, once the grace is over', async () => {
    const child = await stubborn();
    await stopProcess(child, 200);
    expect(child.signalCode).toBe('SIGKILL');
  });

  it('reports how a process exited, also when asked after the fact', async () => {
    const child = spawn(process.execPath, ['-e', 'process.exit(7)'], { stdio: 'ignore' });
    expect(await exited(child)).toEqual({ code: 7, signal: null });
    expect(await exited(child)).toEqual({ code: 7, signal: null });
  });

  it('waits until a check passes, taking a throwing check as not yet', async () => {
    let calls = 0;
    await waitUntil(
      'third time',
      () => {
        calls++;
        if (calls < 3) throw new Error('not up yet');
        return true;
      },
      5000,
    );
    expect(calls).toBe(3);
  });

  it('gives up at once when the process it waits for exits', async () => {
    const child = spawn(process.execPath, ['-e', 'process.exit(4)'], { stdio: 'ignore' });
    await exited(child);
    await expect(waitUntil('service', () => false, 5000, child)).rejects.toThrow('service: the process exited (4) before it was ready');
  });

  it('gives up when the time is over', async () => {
    await expect(waitUntil('never', () => false, 150)).rejects.toThrow('never: not ready within 150 ms');
  });

  it("reads a live process's resident set", () => {
    const memory = readMemory(process.pid);
    expect(memory.rssKiB).toBeGreaterThan(1024);
    expect(memory.hwmKiB).toBeGreaterThanOrEqual(memory.rssKiB);
  });
});
