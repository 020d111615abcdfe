import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { dial, rawRequest, readAll, startHttpOrigin, startProxy, until } from './test-support/harness.js';

/**
 * Request smuggling works by making two parsers disagree on where a request ends. A
 * transparent proxy must refuse what its own parser would have to guess about, so that
 * it never forwards a request the origin might read differently.
 */
const AMBIGUOUS: readonly [name: string, request: string, code: string][] = [
  ['Content-Length and Transfer-Encoding together', 'POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['two different Content-Lengths', 'POST /x HTTP/1.1\r\nHost: o\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!', 'HPE_UNEXPECTED_CONTENT_LENGTH'],
  ['a transfer coding that does not end in chunked', 'POST /x HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n', 'HPE_INVALID_TRANSFER_ENCODING'],
  ['a space before the colon', 'POST /x HTTP/1.1\r\nHost: o\r\nContent-Length : 5\r\n\r\nhello', 'HPE_INVALID_HEADER_TOKEN'],
  ['an obsolete folded header line', 'GET /x HTTP/1.1\r\nHost: o\r\nX-A: a\r\n b\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
  ['a NUL in a header value', 'GET /x HTTP/1.1\r\nHost: o\r\nX-A: a\u0000b\r\n\r\n', 'HPE_INVALID_HEADER_TOKEN'],
];

describe('requests two parsers could read differently', () => {
  it.each(AMBIGUOUS)('refuses %s with 400, and the origin never sees it', async (_name, request, code) => {
    await using origin = await startHttpOrigin((req, res) => res.end(req.url));
    await using under = await startProxy([origin.port]);
    const reply = await rawRequest(under.registry, origin.port, request);

    expect(reply).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(reply).toMatch(/\r\nConnection: close\r\n/);
    expect(origin.connections).toHaveLength(0);
    await until(() => under.events.some((e) => e.type === 'client-error'), 5000, 'the client-error event');
    expect(under.events.filter((e) => e.type === 'client-error')).toEqual([expect.objectContaining({ code, status: 400 })]);
  });

  it('answers every mutation of a valid request with a status line or a close, forwards only what it parsed, and goes on serving', async () => {
    const seenByOrigin: string[] = [];
    await using origin = await startHttpOrigin((req, res) => {
      seenByOrigin.push(`${req.method} ${req.url}`);
      req.resume();
      req.on('end', () => res.end('ok'));
    });
    await using under = await startProxy([origin.port], { headersTimeoutMs: 2000 });
    const valid = Buffer.from('POST /p?q=1 HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 4\r\nX-Tag: abc\r\n\r\nbody', 'latin1');
    const mutated = fc
      .array(fc.record({ at: fc.nat({ max: valid.length - 1 }), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 4 })
      .map((edits) => {
        const copy = Buffer.from(valid);
        for (const { at, byte } of edits) copy[at] = byte;
        return copy;
      });

    await fc.assert(
      fc.asyncProperty(mutated, async (bytes) => {
        // Sent whole, then the client's side is closed: a mutated length that asks for more
        // body than comes must end the exchange, not hang it.
        const client = await dial(under.registry, origin.port);
        const replied = readAll(client);
        client.end(Buffer.concat([bytes, Buffer.from('\r\n\r\n')]));
        const reply = (await replied).toString('latin1');
        client.destroy();
        // A status line from the proxy or the origin, or nothing (the bytes did not sniff as HTTP, or the client's
        // request was cut): never a half-written or interleaved answer.
        expect(reply === '' || /^HTTP\/1\.1 \d{3} [^\r\n]*\r\n/.test(reply)).toBe(true);
      }),
      { numRuns: 60, seed: 20261124 },
    );
    // Whatever reached the origin was a request the proxy's own parser had framed.
    expect(seenByOrigin.every((line) => /^[A-Z]+ \S+$/.test(line))).toBe(true);
    const after = await rawRequest(under.registry, origin.port, 'GET /after HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n');
    expect(after).toMatch(/^HTTP\/1\.1 200 OK\r\n[^]*ok$/);
  });
});
