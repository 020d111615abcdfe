import { type ChildProcess, type SpawnOptions, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';

/** The origin's address, on the namespace's loopback: every client dials it, every redirect rule matches it. */
export const ORIGIN_ADDRESS = '10.200.0.1';

/** No helper command (nft, ip, curl, ss) may take longer than this. */
const EXEC_TIMEOUT_MS = 15_000;

export interface SpawnInOptions {
  /** Where the process's stdout and stderr go; `pipe` to read them. */
  readonly output: 'pipe' | { readonly file: string };
  readonly env?: NodeJS.ProcessEnv;
  /** Run as this uid and gid (setpriv, supplementary groups cleared). */
  readonly uid?: number;
  /** With `uid`: capabilities it keeps (inheritable and ambient, so across exec), e.g. `net_admin`. */
  readonly capabilities?: readonly string[];
}

/**
 * A network namespace of the bench's own: loopback up with {@link ORIGIN_ADDRESS} on it,
 * and every process the bench starts inside it. `destroy()` kills whatever still runs in
 * it (by the kernel's list of the namespace's pids, so grandchildren too) and deletes it;
 * it is idempotent and synchronous, so a signal handler can call it.
 */
export class Namespace {
  private destroyed = false;
  private readonly children = new Set<ChildProcess>();

  private constructor(readonly name: string) {}

  static create(name: string, sysctls: Readonly<Record<string, string>>): Namespace {
    execFileSync('ip', ['netns', 'add', name], { timeout: EXEC_TIMEOUT_MS });
    const ns = new Namespace(name);
    try {
      ns.exec('ip', ['link', 'set', 'lo', 'up']);
      ns.exec('ip', ['addr', 'add', `${ORIGIN_ADDRESS}/24`, 'dev', 'lo']);
      for (const [key, value] of Object.entries(sysctls)) ns.exec('sysctl', ['-q', '-w', `${key}=${value}`]);
    } catch (error) {
      ns.destroy();
      throw error;
    }
    return ns;
  }

  /** Runs a command in the namespace to completion; throws with its stderr when it fails. */
  exec(command: string, args: readonly string[], input?: string): string {
    try {
      return execFileSync('ip', ['netns', 'exec', this.name, command, ...args], {
        encoding: 'utf8',
        timeout: EXEC_TIMEOUT_MS,
        stdio: ['pipe', 'pipe', 'pipe'],
        ...(input !== undefined && { input }),
      });
    } catch (error) {
      const stderr = (error as { stderr?: unknown }).stderr;
      const detail = typeof stderr === 'string' && stderr.trim() !== '' ? `: ${stderr.trim()}` : '';
      throw new Error(`${command} ${args.join(' ')} failed in namespace ${this.name}${detail}`, { cause: error });
    }
  }

  /** Starts a long-running process in the namespace; it is killed by `destroy()` at the latest. */
  spawn(command: string, args: readonly string[], options: SpawnInOptions): ChildProcess {
    if (this.destroyed) throw new Error(`namespace ${this.name} is gone`);
    const caps = (options.capabilities ?? []).map((c) => `+${c}`).join(',');
    const keep = caps === '' ? [] : [`--inh-caps=${caps}`, `--ambient-caps=${caps}`];
    const prefix = options.uid === undefined ? [] : ['setpriv', `--reuid=${options.uid}`, `--regid=${options.uid}`, '--clear-groups', ...keep];
    let out: number | 'pipe' = 'pipe';
    if (options.output !== 'pipe') out = fs.openSync(options.output.file, 'a');
    const spawnOptions: SpawnOptions = { stdio: ['pipe', out, out], env: options.env ?? process.env };
    const child = spawn('ip', ['netns', 'exec', this.name, ...prefix, command, ...args], spawnOptions);
    if (typeof out === 'number') fs.closeSync(out);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    // A failed spawn is reported through 'exit' too; without a listener it would throw.
    child.on('error', () => undefined);
    return child;
  }

  /**
   * Every pid in the namespace (children, grandchildren, daemons), as `ip netns pids`
   * finds them: the processes whose network namespace is this one. Read from /proc here,
   * without a helper process, as the CPU accounting calls it several times a second.
   */
  pids(): number[] {
    if (this.destroyed) return [];
    const inode = fs.statSync(`/run/netns/${this.name}`).ino;
    const wanted = `net:[${inode}]`;
    const pids: number[] = [];
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        if (fs.readlinkSync(`/proc/${entry}/ns/net`) === wanted) pids.push(Number(entry));
      } catch {
        continue; // exited since the listing, or a kernel thread without one
      }
    }
    return pids;
  }

  destroy(): void {
    if (this.destroyed) return;
    for (const child of this.children) child.kill('SIGKILL');
    try {
      // Twice: a process may fork between the listing and the kill.
      for (let round = 0; round < 2; round++) {
        for (const pid of this.pids()) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch (error) {
            if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
          }
        }
      }
    } finally {
      this.destroyed = true;
      execFileSync('ip', ['netns', 'del', this.name], { timeout: EXEC_TIMEOUT_MS });
    }
  }
}
