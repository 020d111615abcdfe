import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { assertKernelTestsCanRun, createNetns, skipKernelTests } from '@coproxy/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { ja4 } from './fingerprint.js';
import { captureChromiumInitials } from './test-support/quic-capture.js';
import { JA4_FIELDS, dissectQuicClientHello, ja4FromTshark, udpPcap } from './test-support/quic-tshark.js';
import { tsharkVersion } from './test-support/tshark.js';

// Debian's Chromium, forced onto QUIC for one origin, sends its Initials to a UDP listener
// in a network namespace; the QUIC Initial reader reads its ClientHello, and tshark reads
// the same datagrams on its own (its QUIC dissector decrypts the Initials and reassembles
// the CRYPTO frames): the JA4 of both readings must be the same string.
//
// With COPROXY_QUIC_FIXTURE_OUT=<file> the captured datagrams are also written there, one
// hex line each: how test-fixtures/quic/chromium-initials.hex was made (see its README).
//
// Needs chromium and tshark. Off CI, COPROXY_SKIP_BROWSER_TESTS=1 skips it.

const run = promisify(execFile);
const skipBrowserTests = process.env.COPROXY_SKIP_BROWSER_TESTS === '1' && process.env.CI !== 'true';

describe.skipIf(skipKernelTests || skipBrowserTests)("Chromium's QUIC Initial, in a network namespace", () => {
  beforeAll(async () => {
    await assertKernelTestsCanRun();
    await tsharkVersion();
    await run('chromium', ['--version']);
  });

  it('reads the ClientHello of the Initials Chromium sends, with the JA4 tshark’s reading gives', async () => {
    await using netns = await createNetns('quic-chromium');
    const { datagrams, result } = await captureChromiumInitials(netns, 'quic.test');
    expect(result.hello.serverName).toBe('quic.test');
    expect(result.hello.alpn).toEqual(['h3']);
    expect(result.summary.versionName).toBe('v1');

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-quic-tshark-'));
    try {
      const file = path.join(dir, 'initials.pcap');
      fs.writeFileSync(file, udpPcap(datagrams));
      const layers = await dissectQuicClientHello(file, JA4_FIELDS);
      expect(layers['tls.handshake.extensions_server_name']).toEqual(['quic.test']);
      expect(ja4(result.hello, 'quic')).toBe(ja4FromTshark(layers, 'q'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    const out = process.env.COPROXY_QUIC_FIXTURE_OUT;
    if (out !== undefined && out !== '') fs.writeFileSync(out, `${datagrams.map((d) => d.toString('hex')).join('\n')}\n`);
  }, 90_000);
});
