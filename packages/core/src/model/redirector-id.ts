import { InvalidOptionsError } from './errors.js';

/** A vendor's identity: lower-case letters, digits and dashes, 1 to 32 of them. */
export const REDIRECTOR_ID_PATTERN = /^[a-z0-9-]{1,32}$/;
export const MAX_REDIRECTOR_ID_LENGTH = 32;

export function isRedirectorId(value: unknown): value is string {
  return typeof value === 'string' && REDIRECTOR_ID_PATTERN.test(value);
}

export function assertRedirectorId(value: unknown, option = 'id'): asserts value is string {
  if (!isRedirectorId(value)) {
    throw new InvalidOptionsError(`must match ${REDIRECTOR_ID_PATTERN.source}, got ${JSON.stringify(value)}`, option);
  }
}
