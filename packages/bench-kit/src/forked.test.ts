import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ForkedChildren } from './forked.js';

// The fixture imports the built kit, as a bench's compiled script does.
const script = fileURLToPath(new URL('../test-fixtures/child.mjs', import.meta.url));
const dirs: string[] = [];

function tempMarker(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-kit-'));
  dirs.push(dir);
  return path.join(dir, 'closed');
}

function connectOnce(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.on('error', reject);
    socket.on('close', () => resolve());
    socket.resume();
  });
}

afterEach(() => {
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

describe('forked children', () => {
  it('starts a child, gives its port once it is ready, answers its counts and closes it on stop', async () => {
    const children = new ForkedChildren(script, 10_000);
    const marker = tempMarker();
    const child = await children.start('serve', ['serve', marker]);
    try {
      await connectOnce(child.port);
      await connectOnce(child.port);
      const stats = await children.askStats<{ accepted: number; pid: number }>(child);
      expect(stats).toEqual({ accepted: 2, pid: child.process.pid });
    } finally {
      await children.stop(child);
    }
    expect(child.process.exitCode).toBe(0);
    expect(fs.readFileSync(marker, 'utf8')).toBe('closed');
  });

  it('rejects with the exit code when a child exits before it is ready', async () => {
    const children = new ForkedChildren(script, 10_000);
    await expect(children.start('failing', ['fail'])).rejects.toThrow('failing exited before it was ready (code 3, signal null)');
  });

  it('kills a child that never says it is ready, once the time is up', async () => {
    // Long enough for the child to start and write its pid on a loaded machine (Node and the
    // kit's import, ~250 ms here at load 8; 1 s was within reach of a busy CI).
    const children = new ForkedChildren(script, 5000);
    const marker = tempMarker();
    await expect(children.start('silent', ['silent', marker])).rejects.toThrow('silent not ready within 5000 ms');
    await children.stopAll();
    const pid = Number(fs.readFileSync(marker, 'utf8'));
    expect(pid).toBeGreaterThan(0);
    // Gone (and reaped): signal 0 finds no such process.
    expect(() => process.kill(pid, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
  });

  it('stops every live child with stopAll, each closing its service', async () => {
    const children = new ForkedChildren(script, 10_000);
    const markers = [tempMarker(), tempMarker()];
    const started = await Promise.all(markers.map((marker, i) => children.start(`serve ${i}`, ['serve', marker])));
    await children.stopAll();
    for (const child of started) expect(child.process.exitCode).toBe(0);
    for (const marker of markers) expect(fs.readFileSync(marker, 'utf8')).toBe('closed');
  });
});
