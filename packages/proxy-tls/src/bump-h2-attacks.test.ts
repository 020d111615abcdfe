import fs from 'node:fs';
import path from 'node:path';
import type tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { H2_LIMITS } from './h2-limits.js';
import { type ProxyUnderTest, startProxy, tempDir, testCa, tlsClient, until } from './test-support/harness.js';
import { ErrorCode, Flag, FrameReader, FrameType, PREFACE, frame, headers, hpack, ping, rstStream, settings, settingsAck, windowUpdate } from './test-support/h2-frames.js';
import { type HttpsOrigin, LARGE_BODY_BYTES, h2Client, h2Request, startHttpsOrigin } from './test-support/h2-support.js';

/**
 * HTTP/2 attacks on bump's client side, each met by a bound the README names
 * (`H2_LIMITS`); after each, the proxy still serves an honest client, both on a session
 * it opened before the attack and on a new connection.
 */

interface Scene {
  readonly origin: HttpsOrigin;
  readonly proxy: ProxyUnderTest;
  readonly proxyCa: Buffer;
  /** A raw TLS connection offering only h2, its preface and SETTINGS sent, what it receives collected. */
  attacker(options?: { acknowledge?: boolean }): Promise<{ socket: tls.TLSSocket; reader: FrameReader }>;
  /** An honest request through the proxy on a new connection: its status. */
  honest(): Promise<number>;
  [Symbol.asyncDispose](): Promise<void>;
}

async function scene(): Promise<Scene> {
  const originCa = await testCa('CN=attacked origin CA');
  const origin = await startHttpsOrigin(originCa, ['h2']);
  const caDir = tempDir('coproxy-tls-proxy-ca-');
  const proxy = await startProxy([origin.port], { policy: { default: 'bump' }, ca: { dir: caDir.path }, originCa: originCa.certPem });
  const proxyCa = fs.readFileSync(path.join(caDir.path, 'ca.crt'));
  return {
    origin,
    proxy,
    proxyCa,
    async attacker({ acknowledge = true } = {}) {
      const { socket } = await tlsClient(proxy.registry, origin.port, { servername: 'shop.example', ca: proxyCa, ALPNProtocols: ['h2'] });
      const reader = new FrameReader(socket);
      socket.write(Buffer.concat([PREFACE, settings()]));
      // The proxy's SETTINGS acknowledged, as a client must: the limits it announced are then in force.
      await until(() => reader.of(FrameType.SETTINGS).some((f) => f.flags === 0), 5000, 'the proxy’s SETTINGS');
      if (acknowledge) socket.write(settingsAck());
      return { socket, reader };
    },
    async honest() {
      await using client = await h2Client(proxy.registry, origin.port, 'shop.example', proxyCa);
      return (await h2Request(client.session, { ':method': 'GET', ':path': '/honest', ':authority': 'shop.example', ':scheme': 'https' })).status;
    },
    async [Symbol.asyncDispose]() {
      await proxy[Symbol.asyncDispose]();
      await origin[Symbol.asyncDispose]();
      caDir[Symbol.dispose]();
      originCa[Symbol.dispose]();
    },
  };
}

const get = (p: string) => ({ ':method': 'GET', ':path': p, ':authority': 'shop.example', ':scheme': 'https' });

describe('bump’s HTTP/2 side under attack', () => {
  it('ends a rapid reset (CVE-2023-44487) with GOAWAY ENHANCE_YOUR_CALM past maxResetsPerSecond, and keeps serving others', async () => {
    await using s = await scene();
    await using bystander = await h2Client(s.proxy.registry, s.origin.port, 'shop.example', s.proxyCa);
    const { socket, reader } = await s.attacker();

    // 600 streams opened and cancelled at once: above our bound (100 a second), below
    // nghttp2's own (a burst of 1000), so it is this proxy's count that must stop it.
    const burst: Buffer[] = [];
    for (let i = 0; i < 600; i++) burst.push(headers(2 * i + 1, hpack.request('shop.example', `/r${i}`)), rstStream(2 * i + 1, ErrorCode.CANCEL));
    socket.write(Buffer.concat(burst));

    await until(() => reader.closed, 10_000, 'the proxy to close the attacker');
    // Node 20 leaves the count to the proxy (GOAWAY ENHANCE_YOUR_CALM, COPROXY_TLS_H2_RAPID_RESET); on Node 22 the
    // session ends inside nghttp2's callback instead (GOAWAY INTERNAL_ERROR, ERR_HTTP2_ERROR). Either way the
    // attacker is cut off, and the bounds below are what matter.
    expect([ErrorCode.ENHANCE_YOUR_CALM, ErrorCode.INTERNAL_ERROR]).toContain(reader.goawayCode);
    const failures = s.proxy.eventsOf('connection-failed');
    expect(failures.length).toBeGreaterThan(0);
    for (const failure of failures) expect(['COPROXY_TLS_H2_RAPID_RESET', 'ERR_HTTP2_ERROR']).toContain(failure.code);
    expect(s.origin.requests.length).toBeLessThanOrEqual(H2_LIMITS.maxResetsPerSecond);
    expect((await h2Request(bystander.session, get('/during'))).status).toBe(200);
    expect(await s.honest()).toBe(200);
  });

  it('refuses a CONTINUATION flood at maxHeaderListSize: the request never reaches the origin', async () => {
    await using s = await scene();
    const { socket, reader } = await s.attacker();

    // A HEADERS frame without END_HEADERS, then 1 KiB header fields in CONTINUATION frames, far past 64 KiB.
    socket.write(headers(1, hpack.request('shop.example', '/flood'), Flag.END_STREAM));
    const value = 'v'.repeat(1000);
    const flood: Buffer[] = [];
    for (let i = 0; i < 200; i++) flood.push(frame(FrameType.CONTINUATION, 0, 1, hpack.literal(`x-flood-${i}`, value)));
    socket.write(Buffer.concat(flood));

    await until(() => reader.closed || reader.goawayCode !== undefined || reader.resets().length > 0, 10_000, 'the proxy to refuse the header block');
    expect(reader.answered()).not.toContain(1);
    expect(s.origin.requests).toEqual([]);
    socket.destroy();
    expect(await s.honest()).toBe(200);
  });

  it('refuses an HPACK bomb (one 4 KB entry referenced 2000 times: 8 MB from 6 KB) at maxHeaderListSize', async () => {
    await using s = await scene();
    const { socket, reader } = await s.attacker();

    const block = Buffer.concat([hpack.request('shop.example', '/bomb'), hpack.literalIndexed('x-bomb', 'b'.repeat(4000)), ...Array.from({ length: 2000 }, () => hpack.indexed(62))]);
    expect(block.length).toBeLessThan(16_384); // one frame of the default size
    socket.write(headers(1, block));

    await until(() => reader.closed || reader.goawayCode !== undefined || reader.resets().length > 0, 10_000, 'the proxy to refuse the header block');
    expect(reader.answered()).not.toContain(1);
    expect(s.origin.requests).toEqual([]);
    socket.destroy();
    expect(await s.honest()).toBe(200);
  });

  it.each([
    ['PING', (i: number) => ping(i)],
    ['SETTINGS', () => settings()],
  ])('ends a %s flood with GOAWAY ENHANCE_YOUR_CALM past maxControlFramesPerSecond', async (_kind, control) => {
    await using s = await scene();
    const { socket, reader } = await s.attacker();

    socket.write(Buffer.concat(Array.from({ length: 5000 }, (_, i) => control(i))));

    await until(() => reader.closed, 10_000, 'the proxy to close the attacker');
    expect(reader.goawayCode).toBe(ErrorCode.ENHANCE_YOUR_CALM);
    expect(s.proxy.eventsOf('connection-failed')).toEqual([expect.objectContaining({ code: 'COPROXY_TLS_H2_CONTROL_FLOOD' })]);
    // Far fewer ACKs than frames: the flood was cut short.
    expect(reader.of(control === ping ? FrameType.PING : FrameType.SETTINGS).length).toBeLessThan(5000);
    expect(await s.honest()).toBe(200);
  });

  it('ends a WINDOW_UPDATE flood with GOAWAY ENHANCE_YOUR_CALM past windowUpdatesBase when no DATA was sent to earn it', async () => {
    await using s = await scene();
    await using bystander = await h2Client(s.proxy.registry, s.origin.port, 'shop.example', s.proxyCa);
    const { socket, reader } = await s.attacker();

    // Valid frames that ask for nothing and that node:http2 never reports: credit for data never sent.
    socket.write(Buffer.concat(Array.from({ length: 5000 }, () => windowUpdate(0, 1))));

    await until(() => reader.closed, 10_000, 'the proxy to close the attacker');
    expect(reader.goawayCode).toBe(ErrorCode.ENHANCE_YOUR_CALM);
    expect(s.proxy.eventsOf('connection-failed')).toEqual([expect.objectContaining({ code: 'COPROXY_TLS_H2_CONTROL_FLOOD', message: expect.stringMatching(/WINDOW_UPDATE/) as unknown })]);
    expect((await h2Request(bystander.session, get('/during'))).status).toBe(200);
    expect(await s.honest()).toBe(200);
  });

  it('does not cut off a client whose WINDOW_UPDATEs its downloads explain (8 MiB in 64 KiB windows, some 500 of them)', async () => {
    await using s = await scene();
    await using client = await h2Client(s.proxy.registry, s.origin.port, 'shop.example', s.proxyCa);
    const answer = await h2Request(client.session, get('/large'));
    expect(answer.status).toBe(200);
    expect(answer.body.length).toBe(LARGE_BODY_BYTES);
    expect(s.proxy.eventsOf('connection-failed')).toEqual([]);
  });

  it('refuses streams past maxConcurrentStreams with REFUSED_STREAM before the client acknowledged the limit; the origin sees at most that many', async () => {
    await using s = await scene();
    const { socket, reader } = await s.attacker({ acknowledge: false });

    // 150 requests the origin holds: the first 100 are open at once, the rest must be refused.
    socket.write(Buffer.concat(Array.from({ length: 150 }, (_, i) => headers(2 * i + 1, hpack.request('shop.example', `/hold-${i}`)))));

    await until(() => reader.resets().length >= 50, 10_000, 'the refused streams');
    expect(new Set(reader.resets().map((r) => r.code))).toEqual(new Set([ErrorCode.REFUSED_STREAM]));
    await until(() => s.origin.requests.length === H2_LIMITS.maxConcurrentStreams, 10_000, 'the admitted streams at the origin');
    s.origin.release();
    await until(() => reader.answered().length === H2_LIMITS.maxConcurrentStreams, 10_000, 'the admitted streams answered');
    expect(s.origin.requests.length).toBe(H2_LIMITS.maxConcurrentStreams);
    expect(reader.closed).toBe(false);
    expect(await s.honest()).toBe(200);
  });

  it('ends the connection of a client that opens more than maxConcurrentStreams after acknowledging the limit; no stream past it is forwarded', async () => {
    await using s = await scene();
    const { socket, reader } = await s.attacker();

    socket.write(Buffer.concat(Array.from({ length: 150 }, (_, i) => headers(2 * i + 1, hpack.request('shop.example', `/hold-${i}`)))));

    // nghttp2 treats it as a connection error (PROTOCOL_ERROR, RFC 9113 §5.1.2 allows either).
    await until(() => reader.closed, 10_000, 'the proxy to close the attacker');
    expect(s.proxy.eventsOf('connection-failed')).toContainEqual(expect.objectContaining({ code: 'ERR_HTTP2_ERROR' }));
    await until(() => s.proxy.exchanges.length === H2_LIMITS.maxConcurrentStreams, 10_000, 'the admitted streams reported');
    expect(s.origin.requests.length).toBeLessThanOrEqual(H2_LIMITS.maxConcurrentStreams);
    s.origin.release();
    expect(await s.honest()).toBe(200);
  });
});
