import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { digestOf, sha256, socketPair } from '../testing/harness.js';
import { MAX_BURST_BYTES, kernelSpliceStatus, setKernelSplice, socketBytes, spliceBurst, type SpliceBurst } from './kernel-splice.js';

/**
 * Forwards `from` to `to` as a proxy would with bursts: Node reads, the proxy writes what
 * was read, then splices what else waits. Ends `to` when `from` ends.
 */
function forwardWithBursts(from: net.Socket, to: net.Socket, limit: number): { bursts: SpliceBurst[]; ended: Promise<void> } {
  const bursts: SpliceBurst[] = [];
  from.on('data', (chunk: Buffer) => {
    to.write(chunk);
    const burst = spliceBurst(from, to, limit);
    if (burst === undefined) return;
    bursts.push(burst);
    if (burst.failed !== undefined) throw burst.failed.error;
    if (burst.rest !== undefined && !to.write(burst.rest)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  const ended = new Promise<void>((resolve) => from.once('end', () => to.end(resolve)));
  return { bursts, ended };
}

const linux = process.platform === 'linux';

afterEach(() => setKernelSplice(true));

describe.runIf(linux)('kernel splice on Linux', () => {
  it('is available: koffi and splice(2) load', () => {
    expect(kernelSpliceStatus()).toEqual({ available: true });
  });

  it('moves what waits in the source, in order and never more than asked, and counts it', async () => {
    using source = await socketPair();
    using destination = await socketPair();
    const data = randomBytes(16 * 1024 * 1024);
    const received = digestOf(destination.far);
    const limit = 300_000; // not a multiple of anything Node or the kernel uses
    const { bursts, ended } = forwardWithBursts(source.far, destination.near, limit);

    source.near.end(data);
    await ended;

    expect(await received).toEqual({ bytes: data.length, sha256: sha256(data) });
    const moved = bursts.reduce((sum, burst) => sum + burst.taken, 0);
    expect(moved, 'bytes that went through the kernel').toBeGreaterThan(0);
    expect(bursts.reduce((sum, burst) => sum + burst.sent + (burst.rest?.length ?? 0), 0)).toBe(moved);
    expect(Math.max(...bursts.map((burst) => burst.taken))).toBeLessThanOrEqual(limit);
    // Node's own counters miss the spliced bytes; socketBytes adds them.
    expect(socketBytes(source.far).read).toBe(data.length);
    expect(socketBytes(destination.near).written).toBe(data.length);
    expect(source.far.bytesRead).toBe(data.length - moved);
  });

  it('hands back what the destination would not take, which then goes first', async () => {
    using source = await socketPair();
    using destination = await socketPair();
    // More than the loopback socket buffers hold, to a reader that does not read yet.
    const data = randomBytes(40 * 1024 * 1024);
    const received = digestOf(destination.far);
    destination.far.pause();
    const { bursts, ended } = forwardWithBursts(source.far, destination.near, 1024 * 1024);
    source.near.end(data);

    const deadline = Date.now() + 10_000;
    while (!bursts.some((burst) => burst.rest !== undefined) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(bursts.some((burst) => (burst.rest?.length ?? 0) > 0), 'a burst that found the destination full').toBe(true);
    destination.far.resume();
    await ended;

    expect(await received).toEqual({ bytes: data.length, sha256: sha256(data) });
    // Asked for 1 MiB a time, given at most what keeps the event loop fair.
    expect(Math.max(...bursts.map((burst) => burst.taken))).toBeLessThanOrEqual(MAX_BURST_BYTES);
    for (const burst of bursts) expect(burst.sent + (burst.rest?.length ?? 0)).toBe(burst.taken);
    // A burst starts small and grows only while the destination keeps up: a full one hands
    // back at most one step, not the whole burst (the first burst may find room, then none).
    const handedBack = bursts.map((burst) => burst.rest?.length ?? 0);
    expect(Math.min(...handedBack.filter((bytes) => bytes > 0))).toBeLessThanOrEqual(64 * 1024);
  });

  it("sees the source's end, and Node still reports it", async () => {
    using source = await socketPair();
    using destination = await socketPair();
    const data = randomBytes(256 * 1024);
    const received = digestOf(destination.far);
    source.far.pause();
    await new Promise<void>((resolve) => source.near.end(data, resolve));
    await new Promise((resolve) => setTimeout(resolve, 50)); // the FIN is in the receive queue
    const { bursts, ended } = forwardWithBursts(source.far, destination.near, data.length * 2);
    source.far.resume();
    await ended;

    expect(bursts.some((burst) => burst.ended)).toBe(true);
    expect(await received).toEqual({ bytes: data.length, sha256: sha256(data) });
  });

  it('stands aside when it cannot keep the order or reach the bytes', async () => {
    using source = await socketPair();
    using destination = await socketPair();
    source.near.write('buffered by Node');
    await new Promise<void>((resolve) => source.far.once('readable', () => resolve()));
    expect(source.far.readableLength).toBeGreaterThan(0);
    expect(spliceBurst(source.far, destination.near, 1024), 'bytes Node holds come first').toBeUndefined();
    source.far.read();

    destination.near.cork();
    destination.near.write('queued');
    expect(spliceBurst(source.far, destination.near, 1024), 'a write still queued on the destination').toBeUndefined();
    destination.near.uncork();

    const secure = new tls.TLSSocket(new net.Socket());
    expect(spliceBurst(source.far, secure, 1024), 'a TLS socket carries ciphertext').toBeUndefined();
    secure.destroy();

    setKernelSplice(false);
    expect(kernelSpliceStatus()).toMatchObject({ available: false });
    expect(spliceBurst(source.far, destination.near, 1024)).toBeUndefined();
  });
});

describe.skipIf(linux)('kernel splice elsewhere', () => {
  it('says it is Linux only, and stands aside', async () => {
    const status = kernelSpliceStatus();
    expect(status.available).toBe(false);
    expect(!status.available && status.reason).toContain('Linux');
    using pair = await socketPair();
    expect(spliceBurst(pair.far, pair.near, 1024)).toBeUndefined();
  });
});
