import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { findSocketInode, findSocketPid, isOwnerAlive, procNetEndpoint, processStartTime } from './proc.js';

/** Above PID_MAX_LIMIT (2^22), so no process ever has it. */
const NO_SUCH_PID = 4_194_305;

/** How the kernel prints 4 or 16 address bytes: each 32-bit word as a little-endian number, in upper-case hex. */
function kernelHex(bytes: Buffer, port: number): string {
  let text = '';
  for (let i = 0; i < bytes.length; i += 4) {
    text += Buffer.from(bytes.subarray(i, i + 4))
      .reverse()
      .toString('hex')
      .toUpperCase();
  }
  return `${text}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** Every way to write the same IPv6 address: full, canonical (WHATWG), with a dotted IPv4 tail, upper case. */
function ipv6Texts(bytes: Buffer): string[] {
  const words = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16));
  const full = words.join(':');
  const canonical = new URL(`http://[${full}]/`).hostname.slice(1, -1);
  const dotted = `${words.slice(0, 6).join(':')}:${[...bytes.subarray(12)].join('.')}`;
  return [full, canonical, dotted, full.toUpperCase()];
}

interface Connection extends AsyncDisposable {
  readonly client: net.Socket;
  readonly accepted: net.Socket;
  readonly port: number;
}

/** A TCP connection to a server of this process on `host`, both ends open until disposed. */
async function loopbackConnection(host: string): Promise<Connection> {
  const server = net.createServer();
  const acceptedP = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect({ host, port });
  await new Promise<void>((resolve, reject) => {
    client.once('error', reject);
    client.once('connect', resolve);
  });
  const accepted = await acceptedP;
  return {
    client,
    accepted,
    port,
    async [Symbol.asyncDispose]() {
      client.destroy();
      accepted.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Whether ::1 can be bound here; any other failure is a real error. */
async function ipv6LoopbackAvailable(): Promise<boolean> {
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '::1', resolve);
    });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT') return false;
    throw error;
  }
  await new Promise((resolve) => server.close(resolve));
  return true;
}

describe('/proc/net/tcp endpoints', () => {
  it('writes IPv4 endpoints as the kernel does', () => {
    expect(procNetEndpoint('127.0.0.1', 8080)).toBe('0100007F:1F90');
    expect(procNetEndpoint('10.1.2.3', 443)).toBe('0302010A:01BB');
    expect(procNetEndpoint('0.0.0.0', 0)).toBe('00000000:0000');
    expect(procNetEndpoint('255.255.255.255', 65535)).toBe('FFFFFFFF:FFFF');
  });

  it('writes IPv6 endpoints as the kernel does, word by word in host order', () => {
    expect(procNetEndpoint('::1', 8080)).toBe('00000000000000000000000001000000:1F90');
    expect(procNetEndpoint('::', 0)).toBe(`${'0'.repeat(32)}:0000`);
    expect(procNetEndpoint('2001:db8::1', 80)).toBe('B80D0120000000000000000001000000:0050');
    expect(procNetEndpoint('fd00:200::1', 80)).toBe('000200FD000000000000000001000000:0050');
  });

  it('reads an IPv6 address with a dotted IPv4 tail, as Node prints some sources', () => {
    expect(new net.SocketAddress({ address: '::a00:1', family: 'ipv6' }).address).toBe('::10.0.0.1');
    expect(procNetEndpoint('::10.0.0.1', 80)).toBe(procNetEndpoint('::a00:1', 80));
    expect(procNetEndpoint('::10.0.0.1', 80)).toBe('0000000000000000000000000100000A:0050');
    expect(procNetEndpoint('::ffff:127.0.0.1', 80)).toBe('0000000000000000FFFF00000100007F:0050');
  });

  it('writes any IPv4 endpoint as the kernel does', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 65535 }), (bytes, port) => {
        expect(procNetEndpoint([...bytes].join('.'), port)).toBe(kernelHex(Buffer.from(bytes), port));
      }),
    );
  });

  it('writes any IPv6 endpoint as the kernel does, however its address is spelled', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: 0, max: 65535 }), (raw, port) => {
        const bytes = Buffer.from(raw);
        for (const text of ipv6Texts(bytes)) expect(procNetEndpoint(text, port), text).toBe(kernelHex(bytes, port));
      }),
      { numRuns: 300 },
    );
  });

  it('matches what the kernel prints for a listening socket', async () => {
    await using connection = await loopbackConnection('127.0.0.1');
    const listing = fs.readFileSync('/proc/net/tcp', 'latin1');
    expect(listing).toContain(` ${procNetEndpoint('127.0.0.1', connection.port)} 00000000:0000 0A `);
  });
});

describe('finding a socket in a /proc/net/tcp listing', () => {
  const listing = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 0000000000000000 100 0 0 10 0',
    '   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0000000000000000 20 4 30 10 -1',
    '   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 41241 1 0000000000000000 20 4 29 10 -1',
    '   3: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000',
    '',
  ].join('\n');

  it('finds the inode of the socket with that local and remote end', () => {
    expect(findSocketInode(listing, '0100007F:D431', '0100007F:1F90')).toBe(41240);
    expect(findSocketInode(listing, '0100007F:1F90', '0100007F:D431')).toBe(41241);
    expect(findSocketInode(listing, '0100007F:1F90', '00000000:0000')).toBe(41234);
  });

  it('finds nothing for a connection that is not there, or has no socket left', () => {
    expect(findSocketInode(listing, '0100007F:D433', '0100007F:1F90')).toBeUndefined();
    expect(findSocketInode(listing, '0100007F:1F90', '0100007F:D432')).toBeUndefined();
    expect(findSocketInode(listing, '0100007F:D432', '0100007F:1F90')).toBeUndefined(); // TIME_WAIT: inode 0
    expect(findSocketInode(listing, 'local_address', 'rem_address')).toBeUndefined();
    expect(findSocketInode('', '0100007F:D431', '0100007F:1F90')).toBeUndefined();
  });
});

describe('process start times', () => {
  it('reads this process’s start time, the same each time', () => {
    const start = processStartTime(process.pid);
    expect(start).toBeTypeOf('number');
    expect(Number.isInteger(start)).toBe(true);
    expect(start).toBeGreaterThan(0);
    expect(processStartTime(process.pid)).toBe(start);
  });

  it('reads field 22 even when the command name holds spaces and parentheses', () => {
    const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-proc-'));
    try {
      fs.mkdirSync(path.join(proc, '42'));
      const rest = Array.from({ length: 50 }, (_, i) => String(i + 3)); // field n holds n
      fs.writeFileSync(path.join(proc, '42', 'stat'), `42 (a) b (c) ${rest.join(' ')}\n`);
      expect(processStartTime(42, proc)).toBe(22);
      expect(isOwnerAlive(42, 22, proc)).toBe(true);
      expect(processStartTime(43, proc)).toBeUndefined();
    } finally {
      fs.rmSync(proc, { recursive: true, force: true });
    }
  });

  it('has no start time for a process that does not exist', () => {
    expect(processStartTime(NO_SUCH_PID)).toBeUndefined();
  });

  it('knows an owner is alive only by its pid and its start time together', () => {
    const start = processStartTime(process.pid) ?? -1;
    expect(isOwnerAlive(process.pid, start)).toBe(true);
    expect(isOwnerAlive(process.pid, start + 1)).toBe(false);
    expect(isOwnerAlive(NO_SUCH_PID, start)).toBe(false);
  });
});

describe('the process behind a connection', () => {
  it('is this process for a loopback connection it opened', async () => {
    await using connection = await loopbackConnection('127.0.0.1');
    const { client, port } = connection;
    const clientEnd = { address: client.localAddress ?? '', port: client.localPort ?? 0 };
    expect(findSocketPid(clientEnd, { address: '127.0.0.1', port })).toBe(process.pid);
    // The server's end of the same connection is this process's too.
    expect(findSocketPid({ address: '127.0.0.1', port }, clientEnd)).toBe(process.pid);
  });

  it('is this process for an IPv6 loopback connection it opened', async (ctx) => {
    ctx.skip(!(await ipv6LoopbackAvailable()), '::1 cannot be bound on this host (no IPv6 loopback)');
    await using connection = await loopbackConnection('::1');
    const { client, port } = connection;
    expect(client.localAddress).toBe('::1');
    expect(fs.readFileSync('/proc/net/tcp6', 'latin1')).toContain(` ${procNetEndpoint('::1', client.localPort ?? 0)} ${procNetEndpoint('::1', port)} `);
    expect(findSocketPid({ address: '::1', port: client.localPort ?? 0 }, { address: '::1', port })).toBe(process.pid);
  });

  it('is unknown for a connection that does not exist', async () => {
    await using connection = await loopbackConnection('127.0.0.1');
    const { client, port } = connection;
    // The server's end exists, but towards the client's port, not towards port 1.
    expect(findSocketPid({ address: '127.0.0.1', port }, { address: '127.0.0.1', port: 1 })).toBeUndefined();
    expect(findSocketPid({ address: '127.0.0.1', port: client.localPort ?? 0 }, { address: '127.0.0.2', port })).toBeUndefined();
  });

  it('is unknown for a source that is not an address', () => {
    expect(findSocketPid({ address: '', port: 1 }, { address: '127.0.0.1', port: 2 })).toBeUndefined();
  });

  it('is unknown when /proc has no such listing', () => {
    const proc = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-proc-'));
    try {
      expect(findSocketPid({ address: '127.0.0.1', port: 1 }, { address: '127.0.0.1', port: 2 }, proc)).toBeUndefined();
    } finally {
      fs.rmSync(proc, { recursive: true, force: true });
    }
  });
});
