import { InvalidOptionsError } from '../model/errors.js';
import type { InstallSpec } from './backend.js';

/**
 * For a backend that does not redirect UDP: a rule naming `udpPorts` is refused at
 * creation, rather than installed with its UDP part silently ignored (a vendor would
 * believe it inspects UDP while every datagram passes).
 */
export function refuseUdp(spec: InstallSpec, backend: string): InstallSpec {
  if (spec.udp !== undefined) {
    throw new InvalidOptionsError(`the ${backend} backend does not redirect UDP (the nftables backend does)`, 'match.udpPorts');
  }
  return spec;
}
