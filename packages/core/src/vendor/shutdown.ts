/** The signals a vendor service stops on. */
export const SHUTDOWN_SIGNALS = ['SIGINT', 'SIGTERM'] as const satisfies readonly NodeJS.Signals[];

/**
 * Calls `handler` once, on the first SIGINT or SIGTERM; later signals are ignored while the
 * vendor closes. Returns a function that removes the listeners (tests; a CLI exits instead).
 *
 * Registered with `process.on`, not `once`, and kept registered: the nftables backend's own
 * signal hook counts the process's listeners, and one that finds none other removes the
 * tables and re-raises the signal, so the process would die by it (no exit 0) before
 * `close()` ends. A `once` listener is removed before it runs, which is exactly that case.
 *
 * @example
 * ```ts
 * onShutdownSignal((signal) => {
 *   logger.info({ signal }, 'shutting down');
 *   void proxy.close().then(() => process.exit(0));
 * });
 * ```
 */
export function onShutdownSignal(handler: (signal: NodeJS.Signals) => void): () => void {
  let signalled = false;
  const listener = (signal: NodeJS.Signals): void => {
    if (signalled) return;
    signalled = true;
    handler(signal);
  };
  for (const signal of SHUTDOWN_SIGNALS) process.on(signal, listener);
  return () => {
    for (const signal of SHUTDOWN_SIGNALS) process.off(signal, listener);
  };
}
