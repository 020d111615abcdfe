import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { type LogLine, LogFollower, parseLogLine } from './event-log.js';

const accepted = (id: string, port: number): string =>
  JSON.stringify({
    v: 1, at: 1, pid: 2, redirector: { id, priority: 10, backend: 'embedded' }, event: 'accepted', connectionId: `${id}#1`,
    source: { address: '127.0.0.1', port: 4000 }, originalDestination: { address: '127.0.0.1', port, family: 4 },
    state: 'NotRedirected', redirectedBy: [id], hops: 1,
  });

describe("the testbed's reading of core's event log", () => {
  it('takes installed, accepted and closed lines, and nothing malformed or foreign', () => {
    // A line without transport (written before core took UDP) is TCP.
    expect(parseLogLine(accepted('a', 8080))).toEqual({ event: 'accepted', redirectorId: 'a', connectionId: 'a#1', transport: 'tcp', port: 8080, state: 'NotRedirected', redirectedBy: ['a'] });
    expect(parseLogLine(JSON.stringify({ v: 1, redirector: { id: 'a' }, event: 'installed', listening: { address: '127.0.0.1', port: 5 } }))).toEqual({ event: 'installed', redirectorId: 'a', port: 5 });
    for (const bad of [
      'not json',
      '{"v":2,"redirector":{"id":"a"},"event":"installed","listening":{"port":5}}', // another format version
      accepted('a', 8080).replace('"redirectedBy":["a"]', '"redirectedBy":[1]'),
      accepted('a', 8080).replace('"port":8080', '"port":-1'),
      '{"v":1,"redirector":{"id":"a"},"event":"closed","connectionId":"a#1","bytesFromClient":"many","bytesToClient":0}',
      accepted('a', 8080).replace('"event"', '"transport":"sctp","event"'),
      '{"v":1,"redirector":{"id":"a"},"event":"closed","connectionId":"a#1","transport":"udp","bytesFromClient":3,"bytesToClient":3,"datagramsFromClient":-1}',
      'null',
    ]) {
      expect(parseLogLine(bad), bad).toBeUndefined();
    }
  });

  it('takes a rejected line with its error, for the notes', () => {
    expect(parseLogLine('{"v":1,"redirector":{"id":"a"},"event":"rejected","error":"COPROXY_PROXY_HEADER_MALFORMED: bad"}')).toEqual({
      event: 'rejected',
      redirectorId: 'a',
      error: 'COPROXY_PROXY_HEADER_MALFORMED: bad',
    });
    expect(parseLogLine('{"v":1,"redirector":{"id":"a"},"event":"rejected","error":7}')).toBeUndefined();
  });

  it('tells UDP flows from TCP connections, with their datagram counts', () => {
    expect(parseLogLine(accepted('a', 443).replace('"event"', '"transport":"udp","event"'))).toMatchObject({ event: 'accepted', transport: 'udp', port: 443 });
    expect(
      parseLogLine('{"v":1,"redirector":{"id":"a"},"event":"closed","connectionId":"a#1","transport":"udp","bytesFromClient":30,"bytesToClient":20,"datagramsFromClient":3,"datagramsToClient":2}'),
    ).toEqual({ event: 'closed', redirectorId: 'a', connectionId: 'a#1', transport: 'udp', bytesFromClient: 30, bytesToClient: 20, datagramsFromClient: 3, datagramsToClient: 2 });
  });

  it('follows a file as another process appends to it, a line or a UTF-8 character cut across writes included', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-testbed-test-'));
    try {
      const file = path.join(dir, 'events.jsonl');
      const lines: LogLine[] = [];
      const follower = new LogFollower(file, (line) => lines.push(line));
      follower.read(); // no file yet: nothing, no error
      const first = Buffer.from(`${accepted('é-not-an-id', 1)}\n${accepted('b', 2)}\n`);
      const cut = first.indexOf(Buffer.from('é')) + 1; // inside the two bytes of é
      fs.writeFileSync(file, first.subarray(0, cut));
      follower.read();
      fs.appendFileSync(file, first.subarray(cut));
      follower.read();
      fs.appendFileSync(file, accepted('c', 3).slice(0, 40));
      follower.read();
      expect(lines.map((l) => l.redirectorId)).toEqual(['é-not-an-id', 'b']);
      fs.appendFileSync(file, `${accepted('c', 3).slice(40)}\n`);
      follower.stop();
      expect(lines.map((l) => l.redirectorId)).toEqual(['é-not-an-id', 'b', 'c']);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
