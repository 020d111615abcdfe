import { InvalidOptionsError } from '../model/errors.js';
import type { BackendDefinition } from './backend.js';
import { embedded } from './embedded/embedded-backend.js';
import { nftables } from './nftables/nftables-backend.js';
import { wfp } from './wfp/wfp-backend.js';

// The one place that names the backends core ships. A new backend is its folder (which
// exports a `defineBackend(...)`) and one line here; redirectors, CLIs and the testbed read
// the names from here.
const BUILT_IN = [
  embedded, // the default
  nftables,
  wfp,
] as const;

/** Where a redirector's rule lives: see core's README, "Backends". */
export type BackendName = (typeof BUILT_IN)[number]['name'];

/** Every backend name, the default first: for CLI choices and option checks. */
export const BACKEND_NAMES: readonly BackendName[] = Object.freeze(BUILT_IN.map((definition) => definition.name));

/** The backend of a redirector whose options name none. */
export const DEFAULT_BACKEND: BackendName = BUILT_IN[0].name;

const registered = new Map<string, BackendDefinition>(BUILT_IN.map((definition) => [definition.name, definition]));

/** The definition registered under `name`, if any. */
export function backendDefinition(name: string): BackendDefinition | undefined {
  return registered.get(name);
}

/** The names a redirector accepts now: the built-in ones and any registered since. */
export function registeredBackendNames(): readonly string[] {
  return [...registered.keys()];
}

/**
 * Adds a backend at run time, as the registry's list does at build time. Not part of
 * core's public API: core's tests use it to prove a backend needs nothing more than its
 * definition. Throws on a name already taken.
 *
 * @internal
 */
export function registerBackend(definition: BackendDefinition): void {
  if (registered.has(definition.name)) throw new InvalidOptionsError(`a backend named '${definition.name}' is already registered`, 'name');
  registered.set(definition.name, definition);
}
