/**
 * A bench and the services it measures (an origin, a proxy) as separate processes, so that
 * no two share an event loop: the bench forks its own script with a role as the first
 * argument; the child starts its service, says `ready` with its port over IPC, answers
 * `stats` queries, and closes its service when the bench stops it or goes away.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { stopProcess } from './process.js';

/** What a child runs: a listening service that can count and close. */
export interface ForkedService<TStats> {
  readonly port: number;
  stats(): TStats | Promise<TStats>;
  close(): Promise<void>;
}

type ChildMessage = { readonly ready: true; readonly port: number } | { readonly stats: unknown };
type ParentMessage = { readonly query: 'stats' };

function isChildMessage(value: unknown): value is ChildMessage {
  if (typeof value !== 'object' || value === null) return false;
  if ('ready' in value) return value.ready === true && 'port' in value && typeof value.port === 'number';
  return 'stats' in value && typeof value.stats === 'object' && value.stats !== null;
}

function isParentMessage(value: unknown): value is ParentMessage {
  return typeof value === 'object' && value !== null && 'query' in value && value.query === 'stats';
}

/**
 * The child's side: starts the service, reports it ready, answers stats queries, and
 * stops with the bench. `label` names the child in its messages (`http-bench proxy`).
 * The child exits normally after `close()`, so `node --cpu-prof` writes its profile.
 */
export function serveForked<TStats>(label: string, start: () => Promise<ForkedService<TStats>>): void {
  const send = process.send?.bind(process);
  if (send === undefined) {
    console.error(`${label}: runs as a child of the bench, with an IPC channel`);
    process.exit(2);
  }
  let service: ForkedService<TStats> | undefined;
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    (service?.close() ?? Promise.resolve()).then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`${label}: close failed:`, error);
        process.exit(1);
      },
    );
  };
  // The bench going away disconnects the channel; a terminal's Ctrl-C reaches us too.
  process.on('disconnect', stop);
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('message', (message: unknown) => {
    if (!isParentMessage(message) || service === undefined) return;
    Promise.resolve(service.stats()).then(
      (stats) => send({ stats } satisfies ChildMessage),
      (error: unknown) => {
        console.error(`${label}: stats failed:`, error);
        process.exit(1);
      },
    );
  });
  start().then(
    (started) => {
      service = started;
      if (stopping) return void started.close().finally(() => process.exit(0));
      send({ ready: true, port: started.port } satisfies ChildMessage);
    },
    (error: unknown) => {
      console.error(`${label}: failed to start:`, error);
      process.exit(1);
    },
  );
}

/** A child that said it is ready, and the port its service listens on. */
export interface Forked {
  readonly name: string;
  readonly process: ChildProcess;
  readonly port: number;
}

/**
 * The bench's side: forks `script` (normally the bench's own file) per child, and keeps the
 * live ones, so a signal or a failure can stop them all. Every wait is bounded by
 * `timeoutMs`: for readiness, for a stats answer, and for an exit before SIGKILL.
 */
export class ForkedChildren {
  private readonly live = new Set<ChildProcess>();

  constructor(
    private readonly script: string,
    private readonly timeoutMs = 10_000,
  ) {}

  /** Forks `script args…` with this process's execArgv plus `execArgv` (`--cpu-prof`); resolves once it is ready. */
  start(name: string, args: readonly string[], execArgv: readonly string[] = []): Promise<Forked> {
    const child = fork(this.script, args, {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [...process.execArgv, ...execArgv],
    });
    this.live.add(child);
    child.once('exit', () => this.live.delete(child));
    return new Promise((resolve, reject) => {
      const finish = (error: Error | undefined, port?: number): void => {
        clearTimeout(timer);
        child.off('message', onMessage);
        child.off('exit', onExit);
        child.off('error', onError);
        if (error !== undefined) {
          child.kill('SIGKILL');
          reject(error);
        } else {
          resolve({ name, process: child, port: port ?? 0 });
        }
      };
      const onMessage = (message: unknown): void => {
        if (isChildMessage(message) && 'ready' in message) finish(undefined, message.port);
      };
      const onExit = (code: number | null, signal: NodeJS.Signals | null): void =>
        finish(new Error(`${name} exited before it was ready (code ${String(code)}, signal ${String(signal)})`));
      const onError = (error: Error): void => finish(error);
      const timer = setTimeout(() => finish(new Error(`${name} not ready within ${this.timeoutMs} ms`)), this.timeoutMs);
      child.on('message', onMessage);
      child.once('exit', onExit);
      child.once('error', onError);
    });
  }

  /** The child's counts now. The caller names their type: it is the bench's own protocol. */
  askStats<TStats>(child: Forked): Promise<TStats> {
    return new Promise((resolve, reject) => {
      const finish = (error: Error | undefined, stats?: TStats): void => {
        clearTimeout(timer);
        child.process.off('message', onMessage);
        child.process.off('exit', onExit);
        if (stats !== undefined) resolve(stats);
        else reject(error ?? new Error(`${child.name}: no stats`));
      };
      const onMessage = (message: unknown): void => {
        if (isChildMessage(message) && 'stats' in message) finish(undefined, message.stats as TStats);
      };
      const onExit = (): void => finish(new Error(`${child.name} exited before reporting its stats`));
      const timer = setTimeout(() => finish(new Error(`${child.name}: no stats within ${this.timeoutMs} ms`)), this.timeoutMs);
      child.process.on('message', onMessage);
      child.process.once('exit', onExit);
      child.process.send({ query: 'stats' } satisfies ParentMessage);
    });
  }

  /** SIGTERM (the child closes its service and exits), then SIGKILL if it lingers. */
  stop(child: Forked): Promise<void> {
    return stopProcess(child.process, this.timeoutMs);
  }

  /** Stops every live child; for the end of a run, whatever happened. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.live].map((child) => stopProcess(child, this.timeoutMs)));
  }

  /** Signals every live child without waiting: for a signal handler that exits next. */
  signalAll(signal: NodeJS.Signals = 'SIGTERM'): void {
    for (const child of this.live) child.kill(signal);
  }
}
