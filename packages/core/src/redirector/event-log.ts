import fs from 'node:fs';
import { CoproxyError } from '../model/errors.js';
import type { Redirector } from './redirector.js';
import type { RedirectorEvent } from './redirector-events.js';

/**
 * The opt-in event log: with `COPROXY_EVENT_LOG` set, every redirector this process creates
 * appends one JSON line per event to it, so that a harness (coproxy-testbed's conformance
 * kit) learns what any vendor built on core accepted without code of the vendor's own.
 *
 * `COPROXY_EVENT_LOG=/path/file.jsonl` appends to that file (created mode 0600; several
 * processes may share it: each line is one `write` to a file opened `O_APPEND`);
 * `COPROXY_EVENT_LOG=fd:3` writes to an inherited descriptor. Unset or empty: nothing
 * happens, and no event is even built (a redirector builds events only when observed).
 *
 * The format is versioned (`v`); see `EventLogLine` and core's README.
 */
export const EVENT_LOG_ENV = 'COPROXY_EVENT_LOG';
export const EVENT_LOG_VERSION = 1;

/** One line of the event log. */
export type EventLogLine = {
  readonly v: typeof EVENT_LOG_VERSION;
  readonly at: number;
  readonly pid: number;
  readonly redirector: { readonly id: string; readonly priority: number; readonly backend: string };
} & (
  | { readonly event: 'installed'; readonly listening: { readonly address: string; readonly port: number } }
  | { readonly event: 'uninstalled' }
  | {
      readonly event: 'accepted';
      readonly connectionId: string;
      readonly transport: 'tcp' | 'udp';
      readonly source: { readonly address: string; readonly port: number; readonly pid?: number | undefined };
      readonly originalDestination: { readonly address: string; readonly port: number; readonly family: 4 | 6 };
      readonly state: string;
      readonly redirectedBy: readonly string[];
      /** Redirectors this flow has crossed, this one included: the records' depth. */
      readonly hops: number;
    }
  | { readonly event: 'onward-connected'; readonly connectionId: string; readonly propagateRecords: boolean; readonly redirectedBy: readonly string[] }
  | { readonly event: 'onward-failed'; readonly connectionId: string; readonly error: string }
  | {
      readonly event: 'closed';
      readonly connectionId: string;
      readonly transport: 'tcp' | 'udp';
      readonly bytesFromClient: number;
      readonly bytesToClient: number;
      /** Datagram flows only. */
      readonly datagramsFromClient?: number;
      readonly datagramsToClient?: number;
      readonly error?: string;
      readonly onwardError?: string;
    }
  | { readonly event: 'rejected'; readonly error: string }
);

/** The descriptor every redirector of this process writes to, opened on first use. */
let sink: { readonly target: string; readonly fd: number } | undefined;

function open(target: string): number {
  if (sink?.target === target) return sink.fd;
  const fdMatch = /^fd:(\d+)$/.exec(target);
  const fd = fdMatch === null ? fs.openSync(target, 'a', 0o600) : Number(fdMatch[1]);
  sink = { target, fd };
  return fd;
}

const describeError = (error: Error): string => (error instanceof CoproxyError ? `${error.code}: ${error.message}` : `${error.name}: ${error.message}`);

/** The line for one event; exhaustive over the redirector's events. */
function lineFor(redirector: Redirector<unknown>, event: RedirectorEvent): EventLogLine {
  const base = { v: EVENT_LOG_VERSION, at: event.at, pid: process.pid, redirector: { id: redirector.id, priority: redirector.priority, backend: redirector.backend } } as const;
  switch (event.type) {
    case 'installed':
      return { ...base, event: 'installed', listening: { address: event.listening.address, port: event.listening.port } };
    case 'uninstalled':
      return { ...base, event: 'uninstalled' };
    case 'accepted':
      return {
        ...base,
        event: 'accepted',
        connectionId: event.connectionId,
        transport: event.transport ?? 'tcp',
        source: { address: event.source.address, port: event.source.port, ...(event.source.pid !== undefined && { pid: event.source.pid }) },
        originalDestination: { address: event.originalDestination.address, port: event.originalDestination.port, family: event.originalDestination.family },
        state: event.state,
        redirectedBy: event.redirectedBy,
        hops: event.redirectedBy.length,
      };
    case 'onward-connected':
      return { ...base, event: 'onward-connected', connectionId: event.connectionId, propagateRecords: event.propagateRecords, redirectedBy: event.redirectedBy };
    case 'onward-failed':
      return { ...base, event: 'onward-failed', connectionId: event.connectionId, error: describeError(event.error) };
    case 'closed':
      return {
        ...base,
        event: 'closed',
        connectionId: event.connectionId,
        transport: event.transport ?? 'tcp',
        bytesFromClient: event.bytesFromClient,
        bytesToClient: event.bytesToClient,
        ...(event.datagramsFromClient !== undefined && { datagramsFromClient: event.datagramsFromClient }),
        ...(event.datagramsToClient !== undefined && { datagramsToClient: event.datagramsToClient }),
        ...(event.error !== undefined && { error: describeError(event.error) }),
        ...(event.onwardError !== undefined && { onwardError: describeError(event.onwardError) }),
      };
    case 'rejected':
      return { ...base, event: 'rejected', error: describeError(event.error) };
    default: {
      const unreachable: never = event;
      throw new Error(`unknown redirector event ${JSON.stringify(unreachable)}`);
    }
  }
}

/**
 * Hooked where redirectors are created. Reads the variable per redirector (a test may set
 * it after import); when it is unset, returns at once and subscribes to nothing.
 */
export function attachEventLog(redirector: Redirector<unknown>, env: NodeJS.ProcessEnv = process.env): void {
  const target = env[EVENT_LOG_ENV];
  if (target === undefined || target === '') return;
  let fd: number;
  try {
    fd = open(target);
  } catch (error) {
    // A log that cannot be opened (no such directory, no permission) must not stop the
    // vendor from starting either: createRedirector would otherwise throw an untyped error.
    process.emitWarning(`${EVENT_LOG_ENV}: cannot open ${target}, no event log: ${(error as Error).message}`, 'CoproxyEventLogWarning');
    return;
  }
  // Synchronous writes: a line must be in the log before the vendor acts on the
  // connection, and a process that exits right after an event must not lose it. A write
  // error (disk full, a closed descriptor) stops the log, never the redirector.
  const subscription = redirector.events$.subscribe((event) => {
    try {
      fs.writeSync(fd, `${JSON.stringify(lineFor(redirector, event))}\n`);
    } catch (error) {
      subscription.unsubscribe();
      process.emitWarning(`${EVENT_LOG_ENV}: cannot write to ${target}, event log stopped: ${(error as Error).message}`, 'CoproxyEventLogWarning');
    }
  });
}
