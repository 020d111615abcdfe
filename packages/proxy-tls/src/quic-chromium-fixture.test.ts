import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { ja4 } from './fingerprint.js';
import { QuicInitialReader } from './quic-initial.js';
import { JA4_FIELDS, dissectQuicClientHello, ja4FromTshark, udpPcap } from './test-support/quic-tshark.js';
import { tsharkVersion } from './test-support/tshark.js';

// The Initials Debian's Chromium 156 sent (captured by quic-chromium.kernel.test.ts, see
// test-fixtures/quic/README.md), read by the QUIC Initial reader and by tshark: the same
// JA4 both ways. Its hello carries a post-quantum key share and spans two Initial packets
// in two datagrams.

const fixture = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic', 'chromium-initials.hex');
const datagrams = fs
  .readFileSync(fixture, 'utf8')
  .split('\n')
  .filter((line) => line !== '')
  .map((line) => Buffer.from(line, 'hex'));

function read(order: readonly Buffer[]) {
  const reader = new QuicInitialReader();
  for (const datagram of order) {
    const result = reader.push(datagram);
    if (result.done) return result;
  }
  throw new Error('the captured datagrams hold no whole hello');
}

describe("Chromium's captured QUIC Initials", () => {
  beforeAll(async () => {
    await tsharkVersion();
  });

  it('hold a hello over two Initial packets in two datagrams, with a post-quantum key share, in either order', () => {
    const result = read(datagrams);
    expect(result.summary).toMatchObject({ versionName: 'v1', packets: 2, datagrams: 2 });
    expect(result.hello.serverName).toBe('quic.test');
    expect(result.hello.alpn).toEqual(['h3']);
    expect(result.hello.supportedGroups).toContain(0x11ec); // X25519MLKEM768
    expect(read([...datagrams].reverse()).hello).toEqual(result.hello);
  });

  it('give the JA4 that tshark’s own decryption and dissection of the same datagrams give', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-quic-fixture-'));
    try {
      const file = path.join(dir, 'initials.pcap');
      fs.writeFileSync(file, udpPcap(datagrams));
      const layers = await dissectQuicClientHello(file, JA4_FIELDS);
      const reference = ja4FromTshark(layers, 'q');
      expect(reference).toMatch(/^q13d\d{4}h3_[0-9a-f]{12}_[0-9a-f]{12}$/);
      expect(ja4(read(datagrams).hello, 'quic')).toBe(reference);
      // The value test-fixtures/quic/README.md records for this capture (2026-12-03), so a
      // change to both JA4 builders at once cannot pass unnoticed.
      expect(reference).toBe('q13d0312h3_55b375c5d22e_178839b6cec1');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
