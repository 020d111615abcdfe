// @coproxy/core/testing: network namespaces for kernel tests, for core's own tests and for
// anyone writing an inspector package (the two vendor packages use it). Needs root and
// iproute2 at run time; nothing here runs unless a test calls it.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';

const run = promisify(execFile);

export { type RefusingPort, refusingPort } from './ports.js';

/**
 * Kernel tests (nftables, socket marks) need root and run inside network namespaces they
 * create and remove. Where a developer lacks root they may be skipped, but only by asking:
 * `COPROXY_SKIP_KERNEL_TESTS=1`. Under `CI=true` they always run.
 */
export const skipKernelTests = process.env.COPROXY_SKIP_KERNEL_TESTS === '1' && process.env.CI !== 'true';

/** Fails with the way out named, rather than skipping silently, when kernel tests cannot run. */
export async function assertKernelTestsCanRun(): Promise<void> {
  const hint = 'kernel tests need root, iproute2, nftables and curl (apt-get install -y nftables iproute2 curl); set COPROXY_SKIP_KERNEL_TESTS=1 to skip them on a developer machine';
  if (process.getuid?.() !== 0) throw new Error(`not root: ${hint}`);
  for (const [command, args] of [['ip', ['-V']], ['nft', ['--version']], ['curl', ['--version']]] as const) {
    try {
      await run(command, [...args]);
    } catch (error) {
      throw new Error(`'${command}' is not usable (${(error as Error).message}): ${hint}`, { cause: error });
    }
  }
}

/**
 * A network namespace with loopback up, carrying also addresses that are not loopback
 * addresses (10.200.0.1/24, fd00:200::1/64), so tests reach "remote" origins without
 * leaving the namespace. Disposing it kills every process left inside and deletes it,
 * also when the test failed.
 */
export interface Netns extends AsyncDisposable {
  readonly name: string;
  /** Runs a command inside the namespace to completion; rejects on a non-zero exit. */
  run(command: string, args: readonly string[], options?: { readonly timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  /** Starts a command inside the namespace (`ip netns exec` execs it: same pid). */
  spawn(command: string, args: readonly string[], options?: SpawnOptions): ChildProcess;
}

export const NETNS_V4 = '10.200.0.1';
export const NETNS_V6 = 'fd00:200::1';

let counter = 0;

export async function createNetns(tag: string): Promise<Netns> {
  const name = `cpt-${tag}-${process.pid}-${++counter}-${randomBytes(2).toString('hex')}`;
  await run('ip', ['netns', 'add', name]);
  const children = new Set<ChildProcess>();
  const netns: Netns = {
    name,
    async run(command, args, options = {}) {
      return run('ip', ['netns', 'exec', name, command, ...args], { timeout: options.timeoutMs ?? 20_000 });
    },
    spawn(command, args, options = {}) {
      const child = spawn('ip', ['netns', 'exec', name, command, ...args], options);
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    async [Symbol.asyncDispose]() {
      for (const child of children) child.kill('SIGKILL');
      // Anything else started in it (a grandchild): `ip netns pids` lists them.
      const { stdout } = await run('ip', ['netns', 'pids', name]);
      for (const pid of stdout.split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // already gone is fine
        }
      }
      await run('ip', ['netns', 'del', name]);
    },
  };
  try {
    for (const args of [
      ['link', 'set', 'lo', 'up'],
      // On lo: no dummy or veth module needed, and still not a loopback address.
      ['addr', 'add', `${NETNS_V4}/24`, 'dev', 'lo'],
      ['addr', 'add', `${NETNS_V6}/64`, 'dev', 'lo', 'nodad'],
    ]) {
      await run('ip', ['-n', name, ...args]);
    }
  } catch (error) {
    await netns[Symbol.asyncDispose]();
    throw error;
  }
  return netns;
}
