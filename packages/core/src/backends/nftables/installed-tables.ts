import { NftCommandError } from '../../model/errors.js';
import { nft } from './nft.js';
import { isOwnerAlive } from './proc.js';
import { type ListedTable, parseTable, parseTableNames } from './tables.js';

/**
 * The coproxy tables installed in this network namespace, as the kernel has them, and the
 * operator's view of them: whose they are, whether their process still runs, and the
 * removal of those left behind.
 */

/** Every coproxy table in this network namespace. */
export function listTables(): ListedTable[] {
  const tables = nft();
  const listed: ListedTable[] = [];
  for (const name of parseTableNames(tables.run('list tables inet'))) {
    let text: string;
    try {
      text = tables.run(`list table inet ${name}`);
    } catch (error) {
      if (isGone(error)) continue; // removed between the two listings
      throw error;
    }
    const table = parseTable(text);
    if (table !== undefined) listed.push(table);
  }
  return listed;
}

/** Deletes a table; true if it was there. */
export function removeTable(name: string): boolean {
  try {
    nft().run(`delete table inet ${name}`);
    return true;
  } catch (error) {
    if (isGone(error)) return false;
    throw error;
  }
}

const isGone = (error: unknown): boolean => error instanceof NftCommandError && /No such file or directory/.test(error.detail);

export interface TableStatus extends ListedTable {
  /** `live`: its process runs. `stale`: the process is gone and the table was left behind. */
  readonly state: 'live' | 'stale';
}

export function tableStatuses(): TableStatus[] {
  return listTables().map((table) => ({ ...table, state: isOwnerAlive(table.pid, table.start) ? 'live' : 'stale' }));
}

/**
 * Removes stale tables: fail-open ones always (they only ever stay behind when the kernel
 * did not remove them with their process), fail-closed ones only when asked, because
 * blocking until someone decides otherwise is what fail-closed means.
 */
export function removeStaleTables(options: { readonly failClosed: boolean; readonly dryRun?: boolean }): {
  readonly removed: TableStatus[];
  readonly kept: TableStatus[];
} {
  const removed: TableStatus[] = [];
  const kept: TableStatus[] = [];
  for (const table of tableStatuses()) {
    const remove = table.state === 'stale' && (table.failMode === 'open' || options.failClosed);
    if (!remove) kept.push(table);
    else if (options.dryRun === true || removeTable(table.name)) removed.push(table);
  }
  return { removed, kept };
}
