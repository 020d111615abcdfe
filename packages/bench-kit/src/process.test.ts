import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { captureOutput, exited, exitedWithin, firstLine, readMemory, stopProcess, waitUntil } from './process.js';

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

  it('waits for a process to exit on its own, and kills one that overruns', async () => {
    const quick = spawn(process.execPath, ['-e', 'process.exit(0)'], { stdio: 'ignore' });
    expect(await exitedWithin(quick, 10_000)).toEqual({ code: 0, signal: null });
    const slow = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    expect(await exitedWithin(slow, 200)).toEqual({ code: null, signal: 'SIGKILL' });
  });

  it("captures a process's stdout and stderr", async () => {
    const child = spawn(process.execPath, ['-e', "process.stdout.write('out'); process.stderr.write('err')"], { stdio: ['ignore', 'pipe', 'pipe'] });
    const output = captureOutput(child);
    // 'close', not 'exit': the pipes may still hold data when the process has exited.
    await new Promise((resolve) => child.once('close', resolve));
    expect(output).toEqual({ stdout: 'out', stderr: 'err' });
  });

  it('reads the first line a process writes, while it keeps running', async () => {
    const child = spawn(process.execPath, ['-e', "console.log('{\"open\":3}'); console.log('more'); setInterval(() => {}, 1000)"], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      expect(await firstLine(child, 'client', 10_000)).toBe('{"open":3}');
    } finally {
      await stopProcess(child, 10_000);
    }
  });

  it('says why a process exited before its first line, with its stderr', async () => {
    const child = spawn(process.execPath, ['-e', "console.error('no such host'); process.exit(5)"], { stdio: ['ignore', 'pipe', 'pipe'] });
    await expect(firstLine(child, 'client', 10_000)).rejects.toThrow('client exited with 5: no such host');
  });

  it('kills a process that writes no line in time', async () => {
    const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: ['ignore', 'pipe', 'pipe'] });
    await expect(firstLine(child, 'client', 200)).rejects.toThrow('client: not done within 200 ms');
    expect(await exited(child)).toEqual({ code: null, signal: 'SIGKILL' });
  });
});
