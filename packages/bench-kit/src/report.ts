/** An error as one line for a report: `Name: message`. */
export function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * A positive number from the environment (`BENCH_SECONDS=2`), or `fallback` when unset or
 * empty; throws on anything else, so a typo never silently runs the long default.
 */
export function positiveFromEnv(name: string, fallback: number, integer: boolean): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new Error(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(text)}`);
  }
  return value;
}

/** Prints a table: the first column left-aligned, the others right-aligned, each as wide as its widest cell. */
export function printRows(rows: readonly (readonly string[])[]): void {
  const widths = (rows[0] ?? []).map((_, column) => Math.max(...rows.map((row) => (row[column] ?? '').length)));
  for (const row of rows) {
    console.log(row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0))).join('  '));
  }
}

/** `value / base` with two decimals for a ratio column, or `-` when there is no base to divide by. */
export function ratioText(value: number, base: number | undefined): string {
  return base === undefined || base === 0 ? '-' : (value / base).toFixed(2);
}
