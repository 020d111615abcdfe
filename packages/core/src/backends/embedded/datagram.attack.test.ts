import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRedirector } from '../../redirector/redirector.js';
import { tempRegistry, until } from '../../testing/harness.js';
import { connectDatagram } from './datagram-connect.js';

/**
 * An attacker's pass over the embedded backend's UDP (issue #18). A TCP connection to a
 * redirector's listener dies with the listener; an app's UDP socket from
 * `connectDatagram()` is only *connected* to the listener's address and port, so once the
 * redirector is gone whoever binds that port next gets the app's datagrams (flow header and
 * payload) and can answer them, the app taking the answers for the destination's. The
 * squatter here is another user (uid 65534), as on any shared host.
 */
describe('embedded UDP: the listener port of a redirector that went away (attack)', () => {
  it('sends nothing to, and takes nothing from, another user who binds the port of a redirector that closed', async () => {
    using registry = tempRegistry();
    const origin = dgram.createSocket('udp4');
    const originGot: string[] = [];
    origin.on('message', (payload, remote) => {
      originGot.push(payload.toString());
      origin.send(payload, remote.port, remote.address);
    });
    origin.bind(0, '127.0.0.1');
    await once(origin, 'listening');
    const id = `squat-${process.pid % 10000}`;
    const redirector = createRedirector({ id, priority: 1, registry: registry.path, match: { udpPorts: [origin.address().port] } });
    const subscription = redirector.accepted$.subscribe((flow) => {
      if (flow.transport !== 'udp') return void flow.socket.destroy();
      void flow.connectOnward().then((onward) => {
        flow.datagrams$.subscribe({ next: (payload) => onward.send(payload), complete: () => onward.close() });
        onward.datagrams$.subscribe((payload) => flow.send(payload));
      });
    });
    await redirector.installed();
    const entry = JSON.parse(fs.readFileSync(path.join(registry.path, `${id}.json`), 'utf8')) as { udpListen: { host: string; port: number } };

    const app = await connectDatagram({ host: '127.0.0.1', port: origin.address().port, registry: registry.path });
    const appGot: string[] = [];
    let appError: (Error & { code?: string }) | undefined;
    app.datagrams$.subscribe({ next: (payload) => appGot.push(payload.toString()), error: (error: Error) => (appError = error) });
    app.send(Buffer.from('one'));
    await until(() => appGot.length === 1, 5000, 'the first echo');

    // The vendor stops (or is upgraded, or crashes): its datagram listener's port is free.
    subscription.unsubscribe();
    await redirector.close();
    // Another user binds it, records what comes and answers as if it were the origin.
    const script = `
      const socket = require('node:dgram').createSocket('udp4');
      const got = [];
      socket.on('message', (payload, remote) => { got.push(payload.length); socket.send('spoofed', remote.port, remote.address); });
      socket.bind(${entry.udpListen.port}, '${entry.udpListen.host}', () => process.stdout.write('bound\\n'));
      process.stdin.on('end', () => { process.stdout.write(JSON.stringify(got) + '\\n'); process.exit(0); });
      process.stdin.resume();
      setTimeout(() => process.exit(0), 10_000);`;
    const squatter = spawn(process.execPath, ['-e', script], { uid: 65534, gid: 65534, stdio: ['pipe', 'pipe', 'inherit'] });
    let squatted = '';
    squatter.stdout.on('data', (chunk: Buffer) => (squatted += chunk.toString()));
    const exited = once(squatter, 'exit');
    await until(() => squatted.includes('bound'), 5000, 'the squatter to bind the port');

    app.send(Buffer.from('two'));
    // What the squatter would answer arrives within a round trip on loopback; give it a few.
    await new Promise((resolve) => setTimeout(resolve, 300));
    squatter.stdin.end();
    await exited;
    app.close();
    origin.close();

    expect(JSON.parse(squatted.trim().split('\n').at(-1)!)).toEqual([]);
    expect(appGot).toEqual(['one']);
    expect(originGot).toEqual(['one']);
    // The app learns its redirector is gone, with a typed error, rather than hearing nothing.
    expect(appError?.code).toBe('COPROXY_REDIRECTOR_UNAVAILABLE');
  });
});
