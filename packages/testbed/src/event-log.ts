import fs from 'node:fs';

/**
 * The testbed's reading of core's opt-in event log (`COPROXY_EVENT_LOG`, core's README):
 * the one way it learns what a vendor accepted, for its own vendors and any other built
 * on core alike. A vendor's log is a file the vendor appends to; the testbed follows it.
 * Every field is checked before use: the file is written by a process under test.
 */

/** The lines the testbed acts on; others (onward-*, uninstalled) are skipped. */
export type LogLine =
  /** A connection or datagram refused before it became one (not authorised, malformed, over a limit): `error` is `CODE: message`. */
  | { readonly event: 'rejected'; readonly redirectorId: string; readonly error: string }
  | { readonly event: 'installed'; readonly redirectorId: string; readonly port: number }
  | {
      readonly event: 'accepted';
      readonly redirectorId: string;
      readonly connectionId: string;
      /** `tcp` when the line has none (a log written before core took UDP). */
      readonly transport: 'tcp' | 'udp';
      readonly port: number;
      readonly state: string;
      readonly redirectedBy: readonly string[];
    }
  | {
      readonly event: 'closed';
      readonly redirectorId: string;
      readonly connectionId: string;
      readonly transport: 'tcp' | 'udp';
      readonly bytesFromClient: number;
      readonly bytesToClient: number;
      /** UDP flows: datagrams each way. */
      readonly datagramsFromClient?: number;
      readonly datagramsToClient?: number;
    };

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null;
const isString = (value: unknown): value is string => typeof value === 'string';
const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isInteger(value) && value >= 0;
/** A line's transport: absent is TCP (older logs); anything but `tcp`/`udp` makes the line malformed. */
const transportOf = (value: unknown): 'tcp' | 'udp' | undefined => (value === undefined || value === 'tcp' ? 'tcp' : value === 'udp' ? 'udp' : undefined);

/** One line of the log, or undefined for a line that is not one the testbed uses (or is malformed). */
export function parseLogLine(text: string): LogLine | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return undefined; // a torn or foreign line: the judge then misses an acceptance and says so
  }
  if (!isObject(raw) || raw.v !== 1 || !isObject(raw.redirector) || !isString(raw.redirector.id)) return undefined;
  const redirectorId = raw.redirector.id;
  switch (raw.event) {
    case 'installed':
      return isObject(raw.listening) && isCount(raw.listening.port) ? { event: 'installed', redirectorId, port: raw.listening.port } : undefined;
    case 'accepted': {
      const destination = raw.originalDestination;
      const transport = transportOf(raw.transport);
      if (!isString(raw.connectionId) || transport === undefined || !isObject(destination) || !isCount(destination.port) || !isString(raw.state)) return undefined;
      if (!Array.isArray(raw.redirectedBy) || !raw.redirectedBy.every(isString)) return undefined;
      return { event: 'accepted', redirectorId, connectionId: raw.connectionId, transport, port: destination.port, state: raw.state, redirectedBy: raw.redirectedBy };
    }
    case 'rejected':
      return isString(raw.error) ? { event: 'rejected', redirectorId, error: raw.error } : undefined;
    case 'closed': {
      const transport = transportOf(raw.transport);
      if (!isString(raw.connectionId) || transport === undefined || !isCount(raw.bytesFromClient) || !isCount(raw.bytesToClient)) return undefined;
      if ((raw.datagramsFromClient !== undefined && !isCount(raw.datagramsFromClient)) || (raw.datagramsToClient !== undefined && !isCount(raw.datagramsToClient))) return undefined;
      return {
        event: 'closed',
        redirectorId,
        connectionId: raw.connectionId,
        transport,
        bytesFromClient: raw.bytesFromClient,
        bytesToClient: raw.bytesToClient,
        ...(raw.datagramsFromClient !== undefined && { datagramsFromClient: raw.datagramsFromClient }),
        ...(raw.datagramsToClient !== undefined && { datagramsToClient: raw.datagramsToClient }),
      };
    }
    default:
      return undefined;
  }
}

/**
 * Follows a file another process appends to, line by line. Polls (every 20 ms): fs.watch
 * misses writes on some filesystems, and the file may not exist until the vendor starts.
 */
export class LogFollower {
  private offset = 0;
  /** Bytes after the last newline: a line being written, or a UTF-8 sequence cut by a read. */
  private partial = Buffer.alloc(0);
  private readonly timer: NodeJS.Timeout;
  private stopped = false;
  /** Why following stopped early (the file became unreadable); the vendor then never looks ready. */
  error: Error | undefined;

  constructor(
    readonly file: string,
    private readonly onLine: (line: LogLine) => void,
  ) {
    this.timer = setInterval(() => {
      try {
        this.read();
      } catch (error) {
        this.error = error as Error;
        this.stopped = true;
        clearInterval(this.timer);
      }
    }, 20);
  }

  /** Reads what was written so far. */
  read(): void {
    if (this.stopped) return;
    let fd: number;
    try {
      fd = fs.openSync(this.file, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return; // not written yet
      throw error;
    }
    try {
      const buffer = Buffer.alloc(1 << 16);
      for (;;) {
        const n = fs.readSync(fd, buffer, 0, buffer.length, this.offset);
        if (n === 0) break;
        this.offset += n;
        let text = Buffer.concat([this.partial, buffer.subarray(0, n)]);
        for (let newline = text.indexOf(0x0a); newline >= 0; newline = text.indexOf(0x0a)) {
          const parsed = parseLogLine(text.subarray(0, newline).toString('utf8'));
          text = text.subarray(newline + 1);
          if (parsed !== undefined) this.onLine(parsed);
        }
        this.partial = Buffer.from(text);
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Reads the rest, then stops. */
  stop(): void {
    if (this.stopped) return;
    clearInterval(this.timer);
    try {
      this.read();
    } finally {
      this.stopped = true;
    }
  }
}
