import { BackendUnavailableError } from '../../errors.js';
import type { Backend } from '../backend.js';

/** Windows Filtering Platform through ws2_32: tracked in issue #8, not built yet. */
export function wfpBackend(): Backend {
  throw new BackendUnavailableError('wfp', 'not implemented yet in this version of @coproxy/core');
}
