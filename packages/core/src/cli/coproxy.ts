#!/usr/bin/env node
import { Command, CommanderError } from 'commander';
import { CoproxyError } from '../model/errors.js';
import { removeStaleTables, tableStatuses, type TableStatus } from '../backends/nftables/installed-tables.js';
import { hex32 } from '../backends/nftables/tables.js';

/**
 * `coproxy`: the operator's view of what coproxy installed on this host.
 *
 *   coproxy nft list [--json]                 the coproxy tables, whose they are, live or stale
 *   coproxy nft cleanup [--fail-closed] [--dry-run]
 *                                             remove tables whose process is gone
 *
 * Exit codes: 0 done, 1 failed (the message says why), 2 usage error.
 */
const program = new Command('coproxy')
  .description('Inspect and repair what coproxy installed on this host')
  .exitOverride()
  .configureOutput({ writeErr: (text) => process.stderr.write(text) });

const nftCommand = program.command('nft').description('the nftables backend: one table per redirector (run as root, in the network namespace to inspect)');

nftCommand
  .command('list')
  .description('list coproxy tables with their owner, mark bit, priority, fail mode and state')
  .option('--json', 'one JSON array instead of a table')
  .action((options: { json?: boolean }) => {
    const tables = tableStatuses();
    if (options.json === true) return void process.stdout.write(`${JSON.stringify(tables.map(toJson), null, 2)}\n`);
    if (tables.length === 0) return void process.stdout.write('no coproxy tables\n');
    const rows = [['TABLE', 'MARK BIT', 'PRIORITY', 'FAIL', 'PID', 'STATE'], ...tables.map(toRow)];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
    for (const row of rows) process.stdout.write(`${row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()}\n`);
    for (const table of tables) {
      if (table.state === 'stale' && table.failMode === 'closed') {
        process.stdout.write(`\n${table.name}: fail-closed and its process is gone, so it blocks the traffic it matches; ` +
          `it stays until '${table.id}' restarts or 'coproxy nft cleanup --fail-closed' removes it\n`);
      }
    }
  });

nftCommand
  .command('cleanup')
  .description('remove tables left by processes that are gone (fail-open ones; fail-closed ones only with --fail-closed)')
  .option('--fail-closed', 'also remove stale fail-closed tables, letting their traffic through uninspected')
  .option('--dry-run', 'say what would be removed, remove nothing')
  .action((options: { failClosed?: boolean; dryRun?: boolean }) => {
    const { removed, kept } = removeStaleTables({ failClosed: options.failClosed === true, dryRun: options.dryRun === true });
    const verb = options.dryRun === true ? 'would remove' : 'removed';
    for (const table of removed) process.stdout.write(`${verb} ${table.name} (pid ${table.pid} is gone, fail-${table.failMode})\n`);
    for (const table of kept.filter((t) => t.state === 'stale')) {
      process.stdout.write(`kept ${table.name} (pid ${table.pid} is gone, fail-closed: pass --fail-closed to remove it)\n`);
    }
    if (removed.length === 0) process.stdout.write('nothing to remove\n');
  });

function toRow(table: TableStatus): string[] {
  return [table.name, hex32(table.bit), String(table.priority), table.failMode, String(table.pid), table.state];
}

function toJson(table: TableStatus): Record<string, unknown> {
  return { table: table.name, id: table.id, bit: hex32(table.bit), priority: table.priority, failMode: table.failMode, pid: table.pid, state: table.state, active: table.active };
}

try {
  program.parse();
} catch (error) {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
  if (error instanceof CoproxyError) {
    process.stderr.write(`coproxy: ${error.message} (${error.code})\n`);
    process.exit(1);
  }
  throw error;
}
