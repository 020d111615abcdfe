import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClientHello, parseClientHello } from './client-hello.js';
import { ja3, ja4 } from './fingerprint.js';
import { captureCurlHello, captureNodeHello } from './test-support/capture.js';
import { GREASY_FIELDS, type HelloFields, clientHello, ext, handshake, helloBody, tlsRecords, segments } from './test-support/hello-builder.js';
import { dissectClientHellos, pcap, tsharkVersion } from './test-support/tshark.js';

function helloOf(bytes: Buffer): ClientHello {
  const result = parseClientHello(bytes);
  if (!result.done) throw new Error('not a whole ClientHello');
  return result.hello;
}

const sha12 = (text: string): string => createHash('sha256').update(text).digest('hex').slice(0, 12);
const md5 = (text: string): string => createHash('md5').update(text).digest('hex');

/** RFC 8701's sixteen GREASE values, written out rather than computed like the code under test does. */
const GREASE = new Set([
  0x0a0a, 0x1a1a, 0x2a2a, 0x3a3a, 0x4a4a, 0x5a5a, 0x6a6a, 0x7a7a, 0x8a8a, 0x9a9a, 0xaaaa, 0xbaba, 0xcaca, 0xdada, 0xeaea, 0xfafa,
]);

/** The hellos compared with Wireshark, each made in `beforeAll`: real clients' and hand-built ones. */
const SOURCES = [
  'Node’s TLS client',
  'Node’s TLS client without SNI, TLS 1.2 at most',
  'curl',
  'a hand-built hello with GREASE everywhere, in three records and four TCP segments',
  'a hand-built hello with an outer encrypted_client_hello',
  'a hand-built TLS 1.0 hello without extensions',
] as const;
type Source = (typeof SOURCES)[number];

async function makeHello(source: Source): Promise<{ bytes: Buffer; cuts: number[] }> {
  switch (source) {
    case 'Node’s TLS client':
      return { bytes: await captureNodeHello({ servername: 'node.example', ALPNProtocols: ['h2', 'http/1.1'] }), cuts: [] };
    case 'Node’s TLS client without SNI, TLS 1.2 at most':
      return { bytes: await captureNodeHello({ maxVersion: 'TLSv1.2' }), cuts: [] };
    case 'curl':
      return { bytes: await captureCurlHello('curl.example'), cuts: [] };
    case 'a hand-built hello with GREASE everywhere, in three records and four TCP segments':
      // One cut inside the first record header.
      return { bytes: clientHello(GREASY_FIELDS, { sizes: [60, 40, 1000] }), cuts: [3, 70, 120] };
    case 'a hand-built hello with an outer encrypted_client_hello':
      return {
        bytes: clientHello({
          cipherSuites: [0x1301, 0x1302],
          extensions: [
            ext.serverName('public.example'),
            ext.supportedGroups(0x001d),
            ext.echOuter({ kdf: 1, aead: 1, configId: 9, enc: Buffer.alloc(32, 3), payload: Buffer.alloc(150, 4) }),
            ext.supportedVersions(0x0304),
          ],
        }),
        cuts: [],
      };
    case 'a hand-built TLS 1.0 hello without extensions':
      return { bytes: clientHello({ legacyVersion: 0x0301, cipherSuites: [0x002f, 0x0035], extensions: undefined }), cuts: [] };
  }
}

// Wireshark computes JA3 itself (`tls.handshake.ja3`, `…ja3_full`: Debian 12's tshark 4.0
// has both, but no JA4 field, hence JA4 is checked by hand below). Each hello goes into one
// pcap file as its own TCP flow; tshark reassembles records and segments and fingerprints
// each hello, and our JA3 must match: the hash, and the text it hashes. As a second path,
// independent of Wireshark's JA3 code too, the test computes JA3 from the lists tshark
// dissected.
describe('JA3, checked against Wireshark (tshark)', () => {
  const flows = new Map<Source, { clientPort: number; bytes: Buffer; segments: Buffer[] }>();
  let dissected: Map<number, Record<string, string[]>>;
  let dir: string | undefined;

  beforeAll(async () => {
    await tsharkVersion();
    for (const [index, source] of SOURCES.entries()) {
      const { bytes, cuts } = await makeHello(source);
      flows.set(source, { clientPort: 40_001 + index, bytes, segments: segments(bytes, cuts) });
    }
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coproxy-tls-ja3-'));
    const file = path.join(dir, 'hellos.pcap');
    fs.writeFileSync(file, pcap([...flows.values()]));
    dissected = await dissectClientHellos(file, [
      'tls.handshake.ja3',
      'tls.handshake.ja3_full',
      'tls.handshake.version',
      'tls.handshake.ciphersuite',
      'tls.handshake.extension.type',
      'tls.handshake.extensions_supported_group',
      'tls.handshake.extensions_ec_point_format',
    ]);
  }, 60_000);

  afterAll(() => {
    if (dir !== undefined) fs.rmSync(dir, { recursive: true, force: true });
  });

  const flow = (source: Source) => {
    const found = flows.get(source);
    if (found === undefined) throw new Error(`no hello from ${source}`);
    return { ...found, fields: dissected.get(found.clientPort) ?? {} };
  };

  it('finds every hello in the capture, reassembled', () => {
    expect([...dissected.keys()].sort()).toEqual([...flows.values()].map((f) => f.clientPort));
    expect(flow('a hand-built hello with GREASE everywhere, in three records and four TCP segments').segments.length).toBe(4);
  });

  it.each(SOURCES)('gives the hello of %s the JA3 hash and text that tshark gives it', (source) => {
    const { bytes, fields } = flow(source);
    const ours = ja3(helloOf(bytes));

    expect({ hash: ours.hash, text: ours.text }).toEqual({ hash: fields['tls.handshake.ja3']?.[0], text: fields['tls.handshake.ja3_full']?.[0] });
  });

  it.each(SOURCES)('gives the hello of %s the JA3 computed from the lists tshark dissected', (source) => {
    const { bytes, fields } = flow(source);
    const numbers = (field: string): number[] => (fields[field] ?? []).map(Number);
    const list = (field: string): string => numbers(field).filter((value) => !GREASE.has(value)).join('-');
    const text = [
      numbers('tls.handshake.version')[0],
      list('tls.handshake.ciphersuite'),
      list('tls.handshake.extension.type'),
      list('tls.handshake.extensions_supported_group'),
      numbers('tls.handshake.extensions_ec_point_format').join('-'),
    ].join(',');

    expect(numbers('tls.handshake.ciphersuite').length).toBeGreaterThan(0);
    expect(ja3(helloOf(bytes))).toEqual({ text, hash: md5(text) });
  });
});

describe('JA3 worked out by hand', () => {
  it('drops GREASE from ciphers, extensions and groups, keeps the client’s order, and hashes the text with MD5', () => {
    // GREASY_FIELDS: legacy_version 0x0303 = 771; ciphers 0x1301 0x1302 0xc02b = 4865 4866 49195;
    // extensions server_name 0, ALPN 16, supported_versions 43, groups 10, point formats 11,
    // signature_algorithms 13; groups x25519 29, secp256r1 23; point format uncompressed 0.
    const text = '771,4865-4866-49195,0-16-43-10-11-13,29-23,0';

    expect(ja3(helloOf(clientHello(GREASY_FIELDS)))).toEqual({ text, hash: md5(text) });
  });
});

/** Builds the hello of the JA4 spec's worked example (FoxIO, technical_details/JA4.md). */
function specExampleFields(signatureAlgorithms: number[]): HelloFields {
  // Extensions in the spec's order, 001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,0015,
  // with a GREASE extension in front and GREASE ciphers, which JA4 ignores.
  const types = [0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015];
  const decoded: Record<number, ReturnType<typeof ext.raw>> = {
    0x0000: ext.serverName('example.com'),
    0x0010: ext.alpn('h2', 'http/1.1'),
    0x000d: ext.signatureAlgorithms(...signatureAlgorithms),
    0x002b: ext.supportedVersions(0xdada, 0x0304, 0x0303),
    0x000b: ext.ecPointFormats(0),
    0x000a: ext.supportedGroups(0x2a2a, 0x001d, 0x0017, 0x0018),
  };
  return {
    cipherSuites: [0x8a8a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035],
    extensions: [ext.raw(0x9a9a), ...types.map((type) => decoded[type] ?? ext.raw(type))],
  };
}

describe('JA4 worked out by hand from the spec', () => {
  it('matches the spec’s own worked example, GREASE ignored', () => {
    // The spec states the result: t13d1516h2_8daaf6152771_e5627efa2ab1 (15 ciphers and 16
    // extensions without GREASE; ALPN h2; the two hashes over the sorted lists it prints).
    const hello = helloOf(clientHello(specExampleFields([0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601])));

    expect(ja4(hello)).toBe('t13d1516h2_8daaf6152771_e5627efa2ab1');
  });

  it('ends the extension string without an underscore when there are no signature algorithms (the spec’s 6d807ffa2a79)', () => {
    const hello = helloOf(clientHello(specExampleFields([])));

    expect(ja4(hello)).toBe('t13d1516h2_8daaf6152771_6d807ffa2a79');
  });

  it('fingerprints the GREASE-laden hand-built hello as worked out here', () => {
    // a: t (TCP), 13 (highest supported_version, 0x2a2a ignored), d (server_name present),
    //    03 ciphers (0x1301 0x1302 0xc02b; 0x0a0a 0x3a3a are GREASE), 06 extensions (0000 0010
    //    002b 000a 000b 000d; 0x1a1a 0xfafa are GREASE), h2 (first and last character of "h2").
    // b: the ciphers as 4-digit hex, sorted: "1301,1302,c02b".
    // c: the extensions sorted without SNI (0000) and ALPN (0010): "000a,000b,000d,002b", then
    //    "_" and the signature algorithms in the client's order without GREASE: "0403,0804".
    const expected = `t13d0306h2_${sha12('1301,1302,c02b')}_${sha12('000a,000b,000d,002b_0403,0804')}`;

    expect(ja4(helloOf(clientHello(GREASY_FIELDS)))).toBe(expected);
    // The same hello split over records and segments fingerprints the same.
    const split = tlsRecords(handshake(helloBody(GREASY_FIELDS)), { sizes: [5] });
    expect(ja4(helloOf(split))).toBe(expected);
  });

  it('reads the version from supported_versions, else legacy_version, and says 00 for one it does not know', () => {
    const a = (fields: HelloFields): string => ja4(helloOf(clientHello(fields))).slice(0, 10);

    expect(a({ legacyVersion: 0x0303, extensions: [] })).toBe('t12i010000');
    expect(a({ legacyVersion: 0x0301, extensions: undefined })).toBe('t10i010000');
    expect(a({ legacyVersion: 0x0300, extensions: [] })).toBe('ts3i010000');
    expect(a({ extensions: [ext.supportedVersions(0x3a3a)] })).toBe('t12i010100'); // only GREASE: legacy_version; one extension
    expect(a({ extensions: [ext.supportedVersions(0x0303, 0x0302)] })).toBe('t12i010100');
    expect(a({ extensions: [ext.supportedVersions(0x7f1c)] })).toBe('t00i010100'); // a draft version: unknown
  });

  it('says d whenever the server_name extension is there, i without it, and caps counts at 99', () => {
    expect(ja4(helloOf(clientHello({ extensions: [ext.raw(0x0000)] }))).slice(0, 4)).toBe('t12d');
    expect(ja4(helloOf(clientHello({ extensions: [ext.serverName('x.example')] }))).slice(0, 4)).toBe('t12d');
    expect(ja4(helloOf(clientHello({ extensions: [] }))).slice(0, 4)).toBe('t12i');
    const many = Array.from({ length: 120 }, (_, i) => 0x0100 + i);
    expect(ja4(helloOf(clientHello({ cipherSuites: many, extensions: [] }))).slice(0, 10)).toBe('t12i990000');
  });

  it('prints ALPN as its first and last characters, or the first and last hex digits when either is not alphanumeric', () => {
    const alpn = (first: string | undefined): string =>
      ja4(helloOf(clientHello({ extensions: first === undefined ? [] : [ext.alpn(first, 'http/1.1')] }))).slice(8, 10);

    // The spec's examples, and its single-character and missing cases.
    expect(alpn('http/1.1')).toBe('h1');
    expect(alpn('h2')).toBe('h2');
    expect(alpn('x')).toBe('xx');
    expect(alpn(undefined)).toBe('00');
    expect(alpn('\xab')).toBe('ab');
    expect(alpn('\xab\xcd')).toBe('ad');
    expect(alpn('\x30\xab')).toBe('3b');
    expect(alpn('\x30\x31\xab\xcd')).toBe('3d');
    expect(alpn('\x30\xab\xcd\x31')).toBe('01');
  });

  it('uses 000000000000 for an empty cipher or extension list rather than hashing nothing', () => {
    // Only GREASE ciphers, and no extensions but SNI and ALPN.
    const hello = helloOf(clientHello({ cipherSuites: [0x0a0a], extensions: [ext.serverName('a.example'), ext.alpn('h2')] }));

    expect(ja4(hello)).toBe('t12d0002h2_000000000000_000000000000');
  });
});
