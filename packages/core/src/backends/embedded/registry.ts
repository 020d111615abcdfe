import { createSecretKey, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { errnoCode, RedirectorIdInUseError, RegistryError } from '../../model/errors.js';
import { isRedirectorId } from '../../model/redirector-id.js';
import { compileMatch, type CompiledMatch, type MatchRule } from '../../model/match-rule.js';
import { MAX_CONTEXT_BYTES, type FailMode } from '../../model/flow.js';

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
  /** The datagram listener, when the rule names `udpPorts` (datagram-connect.ts checks it before use). */
  readonly udpListen?: { readonly host: string; readonly port: number };
  readonly pid: number;
  /** Random per installation: who may remove the entry, even within one process. */
  readonly nonce: string;
  /**
   * Random per installation, 32 bytes, base64: the key of the HMAC that every connection
   * to the listener must carry (TLV 0xE3). This file is the only place it is written, with
   * mode 0600 in a 0700 directory, so only the registry's owner (and root) can send the
   * listener a header it accepts.
   */
  readonly secret: string;
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
  /** The entry's secret, made into a key once per file version, not per connection. */
  readonly key: KeyObject;
}

/** Bytes of a registry entry's secret. */
export const SECRET_BYTES = 32;

/**
 * `COPROXY_REGISTRY`, else a path derived from the user alone: on POSIX
 * `/tmp/coproxy-<uid>/registry`, on Windows `<per-user temp>\coproxy-<user>\registry`.
 * Not `$XDG_RUNTIME_DIR` nor `$TMPDIR`: processes of one user started without a login
 * session (cron, services, `su`) would see another table, and a fail-closed vendor would
 * not apply to them.
 */
export function defaultRegistryDir(): string {
  const fromEnv = process.env.COPROXY_REGISTRY;
  if (fromEnv !== undefined && fromEnv !== '') return path.resolve(fromEnv);
  const uid = process.getuid?.();
  if (uid !== undefined) return path.join('/tmp', `coproxy-${uid}`, 'registry');
  return path.join(os.tmpdir(), `coproxy-${os.userInfo().username}`, 'registry');
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

/**
 * Whoever can write the registry decides where this user's connections go, so it must be
 * this user's alone: a directory (not a link) owned by us and writable by nobody else,
 * inside a parent that others cannot swap it out of (ours or root's, and sticky if
 * others may write it, as /tmp is). Windows has no uid; its per-user temp dir is private.
 */
function assertPrivate(stat: fs.Stats | fs.BigIntStats, dir: string): void {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  if (stat.isSymbolicLink() || !stat.isDirectory()) throw new RegistryError('registry is not a directory', dir);
  if (Number(stat.uid) !== uid) {
    throw new RegistryError(`registry directory belongs to uid ${stat.uid}, not to this user (${uid}); refusing it`, dir);
  }
  if ((Number(stat.mode) & 0o022) !== 0) {
    throw new RegistryError(`registry directory is writable by others (mode ${(Number(stat.mode) & 0o777).toString(8)})`, dir);
  }
}

function assertSafeParent(dir: string): void {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  const parent = path.dirname(dir);
  const safeOwner = (stat: fs.Stats): boolean => stat.uid === uid || stat.uid === 0;
  // A link (macOS's /tmp) is fine if whoever could repoint it is us or root.
  const link = fs.lstatSync(parent);
  if (link.isSymbolicLink() && !safeOwner(link)) {
    throw new RegistryError(`the registry's parent is a link owned by uid ${link.uid}`, parent);
  }
  const stat = fs.statSync(parent);
  const mode = Number(stat.mode);
  if (!safeOwner(stat)) throw new RegistryError(`the registry's parent belongs to uid ${stat.uid}`, parent);
  if ((mode & 0o022) !== 0 && (mode & 0o1000) === 0) {
    throw new RegistryError(
      `the registry's parent is group- or other-writable without the sticky bit (mode ${(mode & 0o7777).toString(8)}), so others could replace the registry`,
      parent,
    );
  }
}

/** Creates the registry if needed (mode 0700) and checks that it is private. */
function ensureRegistry(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const stat = fs.lstatSync(dir);
    assertPrivate(stat, dir);
    assertSafeParent(dir);
    // Ours and writable by nobody else, but perhaps made readable by an older version or
    // by hand: entries are 0600 anyway, and listing them is nobody else's business either.
    if (process.getuid !== undefined && (stat.mode & 0o077) !== 0) fs.chmodSync(dir, 0o700);
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    throw new RegistryError('cannot create the registry', dir, { cause: error });
  }
}

function readEntry(file: string): RegistryEntry | undefined {
  let fd: number;
  try {
    // Not through a link: an entry is a file its owner wrote here, nothing else.
    fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0));
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined; // removed between readdir and read
    throw new RegistryError('cannot read registry entry', file, { cause: error });
  }
  try {
    assertPrivateEntry(fs.fstatSync(fd), file);
    return parseEntry(fs.readFileSync(fd, 'utf8'), file);
  } catch (error) {
    if (error instanceof RegistryError) throw error;
    throw new RegistryError('cannot read registry entry', file, { cause: error });
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * An entry says where this user's connections go and holds the secret that lets a
 * process talk to the vendor's listener: one that others could write (or read) is not
 * this user's alone, and is refused. Checked on the descriptor that is then read, so the
 * file cannot be swapped between check and read. Windows has no uid or mode bits here.
 */
function assertPrivateEntry(stat: fs.Stats, file: string): void {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  if (!stat.isFile()) throw new RegistryError('registry entry is not a regular file', file);
  if (stat.uid !== uid) throw new RegistryError(`registry entry belongs to uid ${stat.uid}, not to this user (${uid})`, file);
  if ((stat.mode & 0o077) !== 0) {
    throw new RegistryError(`registry entry is open to others (mode ${(stat.mode & 0o777).toString(8)}, must be 600)`, file);
  }
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
    net.isIP(entry.listen.host) !== 0 &&
    Number.isInteger(entry.listen.port) &&
    entry.listen.port >= 1 &&
    entry.listen.port <= 65535 &&
    typeof entry.pid === 'number' &&
    Number.isInteger(entry.pid) &&
    entry.pid >= 1 &&
    typeof entry.nonce === 'string' &&
    typeof entry.secret === 'string' &&
    Buffer.from(entry.secret, 'base64').length === SECRET_BYTES &&
    typeof entry.match === 'object' &&
    (entry.context === undefined ||
      (typeof entry.context === 'string' && Buffer.from(entry.context, 'base64').length <= MAX_CONTEXT_BYTES));
  if (!valid) throw new RegistryError('registry entry does not have the expected shape', file);
  return entry as RegistryEntry;
}

function safeRead(file: string): RegistryEntry | undefined {
  const state = readState(file);
  return typeof state === 'string' ? undefined : state;
}

function readState(file: string): RegistryEntry | 'missing' | 'corrupt' {
  try {
    return readEntry(file) ?? 'missing';
  } catch (error) {
    if (error instanceof RegistryError) return 'corrupt';
    throw error;
  }
}

/** Entries this process published, by file: removed at exit even without `close()`. */
const published = new Map<string, { nonce: string; failMode: FailMode }>();
let exitHookInstalled = false;

/**
 * Installs a redirector: creates `<id>.json` exclusively (a hard link of a fully written
 * temporary file, so readers never see half an entry and two processes cannot both create
 * it). An entry left by a dead process is replaced; one held by a live process, this one
 * included, is `RedirectorIdInUseError`.
 */
export function publishEntry(dir: string, entry: RegistryEntry): void {
  ensureRegistry(dir);
  const file = entryFile(dir, entry.id);
  const temp = path.join(dir, `.${entry.id}.${entry.nonce}.tmp`);
  try {
    // 'wx': a new file, so the mode given here is the one it gets (umask can only narrow it).
    fs.writeFileSync(temp, JSON.stringify(entry, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  } catch (error) {
    throw new RegistryError('cannot write to the registry', dir, { cause: error });
  }
  try {
    for (let attempt = 0; attempt < 20; attempt++) {
      if (tryLink(temp, file) || takeOverStale(temp, file, entry.id)) {
        published.set(file, { nonce: entry.nonce, failMode: entry.failMode });
        installExitHook();
        invalidateTable(dir);
        return;
      }
    }
    throw new RegistryError('could not claim the entry: another process keeps taking it over', file);
  } finally {
    fs.rmSync(temp, { force: true });
  }
}

function tryLink(temp: string, file: string): boolean {
  try {
    fs.linkSync(temp, file); // fails with EEXIST if anybody holds the id
    return true;
  } catch (error) {
    if (errnoCode(error) === 'EEXIST') return false;
    throw new RegistryError('cannot install the registry entry', file, { cause: error });
  }
}

/**
 * Replaces a stale entry under an exclusive lock file, so that of several processes
 * starting with the same id on top of a stale entry exactly one wins: the check "the
 * holder is dead" and the replacement happen with no other taker in between. Returns
 * false when the caller should try again (the lock was busy or the entry went away).
 */
function takeOverStale(temp: string, file: string, id: string): boolean {
  const holder = safeRead(file);
  if (holder !== undefined && isProcessAlive(holder.pid)) throw new RedirectorIdInUseError(id, holder.pid);
  const lock = `${file}.lock`;
  let fd: number;
  try {
    fd = fs.openSync(lock, 'wx', 0o600);
  } catch (error) {
    if (errnoCode(error) !== 'EEXIST') throw new RegistryError('cannot lock the registry entry', lock, { cause: error });
    breakAbandonedLock(lock);
    return false;
  }
  try {
    fs.writeSync(fd, String(process.pid));
    const current = readState(file);
    // Gone meanwhile (its owner closed): claim it like anyone else. Never remove a file
    // not seen here, as someone may just have linked a live entry in its place.
    if (current === 'missing') return tryLink(temp, file);
    if (current !== 'corrupt' && isProcessAlive(current.pid)) throw new RedirectorIdInUseError(id, current.pid);
    fs.rmSync(file, { force: true }); // dead or corrupt; only lock holders remove, and we hold it
    return tryLink(temp, file);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(lock, { force: true });
  }
}

/**
 * A lock whose writer died mid-take-over would block the id for good. The window is a
 * few syscalls long; a lock older than a second whose pid is gone is removed (an empty
 * one only after ten seconds: its writer may be between creating and writing it). Age
 * and pid are read through one descriptor, and the lock is removed only if it is still
 * that same file.
 */
function breakAbandonedLock(lock: string): void {
  let fd: number;
  try {
    fd = fs.openSync(lock, 'r');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return;
    throw error;
  }
  try {
    const stat = fs.fstatSync(fd);
    const age = Date.now() - stat.mtimeMs;
    const text = fs.readFileSync(fd, 'utf8');
    const pid = Number(text);
    const abandoned =
      text === '' || !Number.isInteger(pid) || pid <= 0 ? age > 10_000 : age > 1000 && !isProcessAlive(pid);
    if (abandoned && fs.lstatSync(lock, { throwIfNoEntry: false })?.ino === stat.ino) fs.rmSync(lock, { force: true });
  } finally {
    fs.closeSync(fd);
  }
}

/** Uninstalls: removes the entry if this installation still owns it. Synchronous for teardown. */
export function removeEntry(dir: string, id: string, nonce: string): void {
  const file = entryFile(dir, id);
  if (published.get(file)?.nonce === nonce) published.delete(file);
  if (safeRead(file)?.nonce === nonce) fs.rmSync(file, { force: true });
  invalidateTable(dir);
}

/**
 * At exit, entries this process still holds are removed if the exit is clean, and
 * fail-open ones always. A fail-closed vendor that crashes leaves its entry, so traffic
 * stays blocked rather than flowing uninspected: that is what fail-closed means.
 */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', (code) => {
    for (const [file, { nonce, failMode }] of published) {
      if (code !== 0 && failMode === 'closed') continue;
      if (safeRead(file)?.nonce === nonce) fs.rmSync(file, { force: true });
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
    let stat: fs.BigIntStats | undefined;
    try {
      stat = fs.lstatSync(this.dir, { bigint: true, throwIfNoEntry: false });
    } catch (error) {
      throw new RegistryError('cannot read the registry', this.dir, { cause: error });
    }
    if (stat === undefined) return (this.entries = []);
    // Checked on every lookup, from the stat we make anyway: a registry that became
    // writable by others must stop steering connections at once.
    assertPrivate(stat, this.dir);
    if (this.stale || stat.mtimeNs !== this.seenMtime) {
      assertSafeParent(this.dir);
      this.stale = false;
      this.seenMtime = stat.mtimeNs;
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
        const key = createSecretKey(Buffer.from(entry.secret, 'base64'));
        loaded.push({ id: entry.id, entry, match: compileMatch(entry.match, `${file}: match`), context, key });
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
  dir = path.resolve(dir);
  let table = tables.get(dir);
  if (table === undefined) tables.set(dir, (table = new RegistryTable(dir)));
  return table;
}

function invalidateTable(dir: string): void {
  tables.get(path.resolve(dir))?.invalidate();
}
