import { BackendUnavailableError } from '../../errors.js';
import type { Backend } from '../backend.js';

/** Linux nftables with socket-mark records: tracked in issue #3, not built yet. */
export function nftablesBackend(): Backend {
  throw new BackendUnavailableError('nftables', 'not implemented yet in this version of @coproxy/core');
}
