import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { errnoCode, RedirectorIdInUseError, RegistryError } from '../../errors.js';
import { isRedirectorId } from '../../records/redirector-id.js';
import { compileMatch, type CompiledMatch, type MatchRule } from '../../redirector/match-rule.js';
import type { FailMode } from '../../redirector/redirector-options.js';

/**
 * The embedded backend's redirect table: a directory with one JSON file per installed
 * redirector, the analogue of one nft table or one WFP filter per vendor. Files are
 * written to a temporary name and linked into place, so a reader never sees half a file
 * and two processes cannot both create the same id.
 */
export interface RegistryEntry {
  readonly format: 1;
  readonly id: string;
  readonly priority: number;
  readonly match: MatchRule;
  readonly failMode: FailMode;
  readonly listen: { readonly host: string; readonly port: number };
  readonly pid: number;
  /** base64 */
  readonly context?: string;
  readonly startedAt: string;
}

/** A registry entry as the connector uses it: its rule compiled once per file version. */
export interface TableEntry {
  readonly id: string;
  readonly entry: RegistryEntry;
  readonly match: CompiledMatch;
  readonly context: Buffer | undefined;
}

export function defaultRegistryDir(): string {
  const fromEnv = process.env.COPROXY_REGISTRY;
  if (fromEnv !== undefined && fromEnv !== '') return path.resolve(fromEnv);
  const user = process.getuid?.() ?? os.userInfo().username;
  return path.join(os.tmpdir(), `coproxy-${user}`, 'registry');
}

const entryFile = (dir: string, id: string): string => path.join(dir, `${id}.json`);

/** `kill(pid, 0)`: ESRCH means gone; EPERM means alive under another user. */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoCode(error) === 'EPERM';
  }
}

function readEntry(file: string): RegistryEntry | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined; // removed between readdir and read
    throw new RegistryError('cannot read registry entry', file, { cause: error });
  }
  return parseEntry(text, file);
}

function parseEntry(text: string, file: string): RegistryEntry {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new RegistryError('registry entry is not JSON', file, { cause: error });
  }
  const entry = value as Partial<RegistryEntry> | null;
  const valid =
    entry !== null &&
    typeof entry === 'object' &&
    entry.format === 1 &&
    isRedirectorId(entry.id) &&
    path.basename(file) === `${entry.id}.json` &&
    Number.isInteger(entry.priority) &&
    (entry.failMode === 'open' || entry.failMode === 'closed') &&
    typeof entry.listen?.host === 'string' &&
    Number.isInteger(entry.listen.port) &&
    Number.isInteger(entry.pid) &&
    typeof entry.match === 'object' &&
    (entry.context === undefined || typeof entry.context === 'string');
  if (!valid) throw new RegistryError('registry entry does not have the expected shape', file);
  return entry as RegistryEntry;
}

/** Entries this process published, removed on a normal exit even without `close()`. */
const published = new Set<string>();
let exitHookInstalled = false;

/**
 * Installs a redirector: creates `<id>.json` exclusively. An entry left by a dead process
 * is replaced; one held by a live process is `RedirectorIdInUseError`.
 */
export function publishEntry(dir: string, entry: RegistryEntry): void {
  const file = entryFile(dir, entry.id);
  const temp = path.join(dir, `.${entry.id}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(temp, JSON.stringify(entry, null, 2) + '\n', { mode: 0o600 });
  } catch (error) {
    throw new RegistryError('cannot write to the registry', dir, { cause: error });
  }
  try {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        fs.linkSync(temp, file); // fails with EEXIST if anybody holds the id
        published.add(file);
        installExitHook();
        invalidateTable(dir);
        return;
      } catch (error) {
        if (errnoCode(error) !== 'EEXIST') throw new RegistryError('cannot install the registry entry', file, { cause: error });
      }
      const holder = safeRead(file);
      if (holder !== undefined && isProcessAlive(holder.pid)) throw new RedirectorIdInUseError(entry.id, holder.pid);
      takeOverStale(file, entry.id);
    }
    throw new RegistryError('gave up replacing a stale entry that keeps coming back', file);
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

function safeRead(file: string): RegistryEntry | undefined {
  try {
    return readEntry(file);
  } catch (error) {
    if (error instanceof RegistryError) return undefined; // corrupt: treat as stale
    throw error;
  }
}

/**
 * Moves a stale entry aside. Rename is atomic, so of two processes replacing the same
 * stale entry one moves it and the other finds nothing; if what was moved turns out to be
 * a live entry (a third process won the race), it is put back.
 */
function takeOverStale(file: string, id: string): void {
  const tomb = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.stale`;
  try {
    fs.renameSync(file, tomb);
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return;
    throw new RegistryError('cannot replace a stale registry entry', file, { cause: error });
  }
  const moved = safeRead(tomb);
  if (moved !== undefined && isProcessAlive(moved.pid)) {
    try {
      fs.linkSync(tomb, file);
    } catch (error) {
      if (errnoCode(error) !== 'EEXIST') throw new RegistryError('cannot restore a live entry', file, { cause: error });
    }
    fs.rmSync(tomb, { force: true });
    throw new RedirectorIdInUseError(id, moved.pid);
  }
  fs.rmSync(tomb, { force: true });
}

/** Uninstalls: removes the entry if this process still owns it. Synchronous for teardown. */
export function removeEntry(dir: string, id: string): void {
  const file = entryFile(dir, id);
  published.delete(file);
  const current = safeRead(file);
  if (current?.pid === process.pid) fs.rmSync(file, { force: true });
  invalidateTable(dir);
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const file of published) {
      const current = safeRead(file);
      if (current?.pid === process.pid) fs.rmSync(file, { force: true });
    }
  });
}

/**
 * The connector's cached view of one registry directory. An `fs.watch` marks it stale
 * when another process installs or removes a redirector; a `stat` of the directory per
 * lookup (one syscall, no reads) catches what the watcher may miss or deliver late, since
 * `fs.watch` is documented as best-effort.
 */
class RegistryTable {
  private entries: readonly TableEntry[] = [];
  private stale = true;
  private seenMtime = -1n;
  private watcher: fs.FSWatcher | undefined;
  private readonly warned = new Set<string>();

  constructor(private readonly dir: string) {}

  invalidate(): void {
    this.stale = true;
  }

  current(): readonly TableEntry[] {
    let mtime: bigint;
    try {
      mtime = fs.statSync(this.dir, { bigint: true }).mtimeNs;
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return (this.entries = []);
      throw new RegistryError('cannot read the registry', this.dir, { cause: error });
    }
    if (this.stale || mtime !== this.seenMtime) {
      this.stale = false;
      this.seenMtime = mtime;
      this.entries = this.load();
      this.watch();
    }
    return this.entries;
  }

  private load(): TableEntry[] {
    const loaded: TableEntry[] = [];
    for (const name of fs.readdirSync(this.dir)) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      const file = path.join(this.dir, name);
      try {
        const entry = readEntry(file);
        if (entry === undefined) continue;
        const context = entry.context === undefined ? undefined : Buffer.from(entry.context, 'base64');
        loaded.push({ id: entry.id, entry, match: compileMatch(entry.match, `${file}: match`), context });
      } catch (error) {
        // A broken entry must not stop every connection on the host, nor pass unseen.
        const key = `${file}:${String(error)}`;
        if (!this.warned.has(key)) {
          this.warned.add(key);
          process.emitWarning(`coproxy: ignoring registry entry ${file}: ${String(error)}`, 'CoproxyRegistryWarning');
        }
      }
    }
    // Ties broken by id, byte order: every process must rank the table the same way.
    return loaded.sort((a, b) => a.entry.priority - b.entry.priority || (a.entry.id < b.entry.id ? -1 : 1));
  }

  private watch(): void {
    if (this.watcher !== undefined) return;
    try {
      this.watcher = fs.watch(this.dir, { persistent: false }, () => this.invalidate());
      this.watcher.on('error', () => {
        // The directory went away or the watch broke: drop it; the stat check carries on.
        this.watcher?.close();
        this.watcher = undefined;
        this.stale = true;
      });
    } catch (error) {
      // Some filesystems cannot be watched; the per-lookup stat still keeps us correct.
      if (errnoCode(error) === undefined) throw error;
    }
  }
}

const tables = new Map<string, RegistryTable>();

export function registryTable(dir: string): RegistryTable {
  let table = tables.get(dir);
  if (table === undefined) tables.set(dir, (table = new RegistryTable(dir)));
  return table;
}

function invalidateTable(dir: string): void {
  tables.get(dir)?.invalidate();
}
