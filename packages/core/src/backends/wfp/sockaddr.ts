import net from 'node:net';
import type { Destination } from '../../model/match-rule.js';
import { addressToBytes, bytesToAddress } from '../../model/ip-address.js';
import { Ws } from './ioctl-codes.js';

/** `sizeof(SOCKADDR_IN6)`, also enough for a `SOCKADDR_IN`. */
export const SOCKADDR_BYTES = 28;

/**
 * A Windows `SOCKADDR_IN` (16 bytes) or `SOCKADDR_IN6` (28): the family in host order
 * (little-endian), AF_INET6 being 23 on Windows; port and address in network order.
 */
export function encodeSockaddr(address: string, port: number): Buffer {
  const family = net.isIP(address);
  if (family === 4) {
    const out = Buffer.alloc(16);
    out.writeUInt16LE(Ws.AF_INET, 0);
    out.writeUInt16BE(port, 2);
    addressToBytes(address).copy(out, 4);
    return out;
  }
  if (family === 6) {
    const out = Buffer.alloc(28);
    out.writeUInt16LE(Ws.AF_INET6, 0);
    out.writeUInt16BE(port, 2);
    addressToBytes(address).copy(out, 8); // sin6_flowinfo (4) stays 0, scope id after
    return out;
  }
  throw new TypeError(`not an IP address: ${address}`);
}

/** The inverse of `encodeSockaddr`; `undefined` for a family other than AF_INET/AF_INET6. */
export function decodeSockaddr(bytes: Buffer, length: number): Destination | undefined {
  if (length < 2) return undefined;
  const family = bytes.readUInt16LE(0);
  if (family === Ws.AF_INET && length >= 8) {
    return { address: bytesToAddress(bytes.subarray(4, 8)), port: bytes.readUInt16BE(2), family: 4 };
  }
  if (family === Ws.AF_INET6 && length >= 24) {
    return { address: bytesToAddress(bytes.subarray(8, 24)), port: bytes.readUInt16BE(2), family: 6 };
  }
  return undefined;
}
