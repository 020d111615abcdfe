import dgram from 'node:dgram';
import { once } from 'node:events';
import { firstValueFrom, lastValueFrom, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { openOnwardDatagram } from './onward-datagram.js';

describe('onward datagram socket', () => {
  it('exchanges datagrams with its destination and completes on close', async () => {
    const origin = dgram.createSocket('udp4');
    origin.on('message', (payload, remote) => origin.send(Buffer.concat([Buffer.from('re:'), payload]), remote.port, remote.address));
    origin.bind(0, '127.0.0.1');
    await once(origin, 'listening');
    try {
      const socket = await openOnwardDatagram({ destination: { address: '127.0.0.1', port: origin.address().port, family: 4 } });
      const reply = firstValueFrom(socket.datagrams$);
      socket.send(Buffer.from('hello'));
      expect(String(await reply)).toBe('re:hello');
      expect(socket.counts).toMatchObject({ datagramsOut: 1, bytesOut: 5, datagramsIn: 1, bytesIn: 8 });
      const all = lastValueFrom(socket.datagrams$.pipe(toArray()));
      socket.close();
      expect(await all).toEqual([]);
      socket.send(Buffer.from('after close')); // ignored, not thrown
    } finally {
      origin.close();
    }
  });

  it('errors its stream with ECONNREFUSED when the destination answers port unreachable, and closes', async () => {
    // A port bound then released: nothing listens there, the kernel answers ICMP port unreachable.
    const probe = dgram.createSocket('udp4');
    probe.bind(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = probe.address().port;
    probe.close();
    const socket = await openOnwardDatagram({ destination: { address: '127.0.0.1', port, family: 4 } });
    const outcome = lastValueFrom(socket.datagrams$).then(
      () => 'completed',
      (error: NodeJS.ErrnoException) => error.code,
    );
    // Bounded: at most 20 sends, until the error arrives.
    for (let i = 0; i < 20 && (await Promise.race([outcome, new Promise((resolve) => setTimeout(resolve, 50, 'pending'))])) === 'pending'; i++) {
      socket.send(Buffer.from('anyone?'));
    }
    expect(await outcome).toBe('ECONNREFUSED');
  });
});
