import fs from 'node:fs';
import net from 'node:net';
import type { Endpoint } from '../backend.js';
import { addressToBytes } from '../../model/ip-address.js';

/**
 * What /proc says about processes and sockets, for the nftables backend: whether a
 * table's owner still runs, and which process opened a redirected connection.
 */

/** Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or undefined if no such process. */
export function processStartTime(pid: number, proc = '/proc'): number | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`${proc}/${pid}/stat`, 'latin1');
  } catch {
    return undefined; // no such process (ENOENT) or not ours to read: treated alike, as gone
  }
  // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const start = Number(fields[19]);
  return Number.isInteger(start) ? start : undefined;
}

/** True while the process that wrote a table (pid and start time) still runs. */
export function isOwnerAlive(pid: number, start: number, proc = '/proc'): boolean {
  return processStartTime(pid, proc) === start;
}

/** How /proc/net/tcp{,6} prints an address and port: 32-bit words in host (little-endian) order. */
export function procNetEndpoint(address: string, port: number): string {
  // addressToBytes also reads a dotted IPv4 tail: Node prints the source ::a00:1 as `::10.0.0.1`.
  const bytes = addressToBytes(address);
  let text = '';
  for (let i = 0; i < bytes.length; i += 4) text += bytes.readUInt32LE(i).toString(16).toUpperCase().padStart(8, '0');
  return `${text}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** The inode of the socket with this local and remote endpoint, from a /proc/net/tcp listing. */
export function findSocketInode(listing: string, local: string, remote: string): number | undefined {
  for (const line of listing.split('\n')) {
    const columns = line.trim().split(/\s+/);
    if (columns[1] === local && columns[2] === remote) {
      const inode = Number(columns[9]);
      return Number.isInteger(inode) && inode > 0 ? inode : undefined;
    }
  }
  return undefined;
}

/**
 * The process that opened a redirected connection: the client's socket is the one whose
 * local end is the flow's source and whose remote end is the original destination (nat
 * rewrote the packets, not the client's socket). Its inode is then looked for among every
 * process's descriptors. A walk of /proc: done only when a caller reads `source.pid`.
 * IPv4 sources are addresses like any other here; the IPv4-mapped form of a dual-stack
 * client socket is not searched.
 */
export function findSocketPid(source: Endpoint, destination: Endpoint, proc = '/proc'): number | undefined {
  const family = net.isIP(source.address);
  if (family === 0) return undefined;
  let listing: string;
  try {
    listing = fs.readFileSync(`${proc}/net/${family === 6 ? 'tcp6' : 'tcp'}`, 'latin1');
  } catch {
    return undefined; // /proc not mounted: the pid is documented as best effort
  }
  const inode = findSocketInode(listing, procNetEndpoint(source.address, source.port), procNetEndpoint(destination.address, destination.port));
  if (inode === undefined) return undefined;
  const target = `socket:[${inode}]`;
  for (const entry of fs.readdirSync(proc)) {
    if (!/^\d+$/.test(entry)) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`${proc}/${entry}/fd`);
    } catch {
      continue; // the process exited meanwhile, or its fds are not ours to read
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = fs.readlinkSync(`${proc}/${entry}/fd/${fd}`);
      } catch {
        continue; // the descriptor closed between readdir and readlink
      }
      if (link === target) return Number(entry);
    }
  }
  return undefined;
}
