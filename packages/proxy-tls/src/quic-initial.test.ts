import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseClientHelloMessage } from './client-hello.js';
import { TlsErrorCode } from './errors.js';
import { ja4 } from './fingerprint.js';
import { QUIC_V1, QUIC_V2, QuicInitialError, QuicInitialReader, decryptInitial, deriveClientInitialKeys, readInitialHeader } from './quic-initial.js';
import { buildInitial, buildInitialDatagram, cryptoFrame, sampleHelloMessage } from './test-support/quic-builder.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-fixtures', 'quic');
const hex = (name: string): Buffer => Buffer.from(fs.readFileSync(path.join(fixtures, name), 'utf8').trim(), 'hex');
const RFC_DCID = Buffer.from('8394c8f03e515708', 'hex');

/** The RFC's CRYPTO frame, decoded: its offset must be 0 and its data is the ClientHello message. */
function rfcHello(frame: Buffer): Buffer {
  expect(frame[0]).toBe(0x06);
  expect(frame[1]).toBe(0x00); // offset 0
  const length = frame.readUInt16BE(2) & 0x3fff;
  return frame.subarray(4, 4 + length);
}

describe('QUIC Initial keys and packet protection', () => {
  it('derives the client Initial keys of RFC 9001 Appendix A.1', () => {
    const keys = deriveClientInitialKeys(QUIC_V1, RFC_DCID);
    expect(keys.secret.toString('hex')).toBe('c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea');
    expect(keys.key.toString('hex')).toBe('1f369613dd76d5467730efcbe3b1a22d');
    expect(keys.iv.toString('hex')).toBe('fa044b2f42a3fd3b46fb255c');
    expect(keys.hp.toString('hex')).toBe('9f50449e04a0e810283a1e9933adedd2');
  });

  it('derives the client Initial keys of RFC 9369 Appendix A.1 (QUIC v2)', () => {
    const keys = deriveClientInitialKeys(QUIC_V2, RFC_DCID);
    expect(keys.secret.toString('hex')).toBe('14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b');
    expect(keys.key.toString('hex')).toBe('8b1a0bc121284290a29e0971b5cd045d');
    expect(keys.iv.toString('hex')).toBe('91f73e2351d8fa91660e909f');
    expect(keys.hp.toString('hex')).toBe('45b95e15235d6f45a6b19cbcb0294ba9');
  });

  for (const [rfc, version] of [
    ['rfc9001', QUIC_V1],
    ['rfc9369', QUIC_V2],
  ] as const) {
    it(`recovers the ClientHello of ${rfc}'s sample client Initial, byte for byte`, () => {
      const datagram = hex(`${rfc}-client-initial.hex`);
      const expected = rfcHello(hex(`${rfc}-crypto-frame.hex`));
      const header = readInitialHeader(datagram);
      expect(header.version).toBe(version);
      expect(header.dcid).toEqual(RFC_DCID);
      expect(header.packetLength).toBe(1200);
      const decrypted = decryptInitial(datagram, header, deriveClientInitialKeys(version, header.dcid));
      expect(decrypted.packetNumber).toBe(2);
      // The RFC's payload: its CRYPTO frame, then PADDING to 1162 bytes.
      const frame = hex(`${rfc}-crypto-frame.hex`);
      expect(decrypted.payload.subarray(0, frame.length)).toEqual(frame);
      expect(decrypted.payload.length).toBe(1162);
      expect(decrypted.payload.subarray(frame.length).every((byte) => byte === 0)).toBe(true);

      const result = new QuicInitialReader().push(datagram);
      if (!result.done) throw new Error('the RFC packet holds a whole hello');
      expect(result.hello).toEqual(parseClientHelloMessage(expected));
      expect(result.hello.serverName).toBe('example.com');
      expect(result.hello.alpn).toEqual(['alpn']);
      expect(result.summary).toMatchObject({ version, versionName: version === QUIC_V1 ? 'v1' : 'v2', packets: 1, datagrams: 1, connectionClose: false });
      // Two cipher suites (1301, 1302); eleven extensions (0000 ff01 000a 0010 0005 0033 002b 000d 002d 001c 0039); ALPN "alpn".
      expect(ja4(result.hello, 'quic')).toMatch(/^q13d0211an_[0-9a-f]{12}_[0-9a-f]{12}$/);
    });
  }

  it('rejects the RFC packet with one ciphertext bit flipped as QUIC_DECRYPT_FAILED', () => {
    const datagram = Buffer.from(hex('rfc9001-client-initial.hex'));
    datagram[600]! ^= 0x01;
    expect(() => new QuicInitialReader().push(datagram)).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicDecryptFailed }));
  });
});

describe('QUIC Initial reader', () => {
  const dcid = Buffer.from('0011223344556677', 'hex');
  const message = sampleHelloMessage('quic.example', ['h3']);

  it('reassembles a hello split over two Initial packets in two datagrams, whatever their order', () => {
    const half = Math.floor(message.length / 2);
    const first = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message.subarray(0, half))] });
    const second = buildInitialDatagram({ dcid, packetNumber: 1, frames: [cryptoFrame(half, message.subarray(half))] });
    for (const order of [
      [first, second],
      [second, first],
    ]) {
      const reader = new QuicInitialReader();
      expect(reader.push(order[0]!).done).toBe(false);
      const result = reader.push(order[1]!);
      if (!result.done) throw new Error('two halves make a hello');
      expect(result.hello.serverName).toBe('quic.example');
      expect(result.summary).toMatchObject({ packets: 2, datagrams: 2 });
    }
  });

  it('reads two Initial packets coalesced in one datagram, with a 0-RTT packet after them skipped', () => {
    const half = 100;
    const packets = [
      buildInitial({ dcid, packetNumber: 0, frames: [cryptoFrame(half, message.subarray(half))] }),
      buildInitial({ dcid, packetNumber: 1, frames: [Buffer.from([0x01]), cryptoFrame(0, message.subarray(0, half))] }),
    ];
    const zeroRtt = Buffer.concat([Buffer.from([0xd0, 0, 0, 0, 1, dcid.length]), dcid, Buffer.from([0, 0x40, 40]), Buffer.alloc(40, 0xee)]);
    const datagram = Buffer.concat([...packets, zeroRtt, Buffer.alloc(Math.max(0, 1200 - packets[0]!.length - packets[1]!.length - zeroRtt.length))]);
    const result = new QuicInitialReader().push(datagram);
    if (!result.done) throw new Error('the datagram holds a whole hello');
    expect(result.hello.alpn).toEqual(['h3']);
    expect(result.summary).toMatchObject({ packets: 2, datagrams: 1, skippedPackets: 1 });
  });

  it('skips a datagram of 0-RTT alone between two Initial datagrams', () => {
    const half = 40;
    const zeroRtt = Buffer.concat([Buffer.from([0xd0, 0, 0, 0, 1, dcid.length]), dcid, Buffer.from([0, 0x40, 30]), Buffer.alloc(30, 0xee)]);
    const reader = new QuicInitialReader();
    expect(reader.push(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message.subarray(0, half))] })).done).toBe(false);
    expect(reader.push(zeroRtt).done).toBe(false);
    const result = reader.push(buildInitialDatagram({ dcid, packetNumber: 1, frames: [cryptoFrame(half, message.subarray(half))] }));
    if (!result.done) throw new Error('the two Initials make a hello');
    expect(result.summary).toMatchObject({ packets: 2, datagrams: 3, skippedPackets: 1 });
  });

  it('refuses an Initial under 1200 bytes after the first datagram too', () => {
    const reader = new QuicInitialReader();
    expect(reader.push(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message.subarray(0, 50))] })).done).toBe(false);
    const small = buildInitial({ dcid, packetNumber: 1, frames: [cryptoFrame(50, message.subarray(50))] });
    expect(small.length).toBeLessThan(1200);
    expect(() => reader.push(small)).toThrow(/COPROXY_TLS_QUIC_MALFORMED: an Initial datagram of \d+ bytes/);
  });

  it('refuses CRYPTO bytes sent twice with different values', () => {
    const other = Buffer.from(message);
    other[10]! ^= 0xff;
    const datagram = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message.subarray(0, 50)), cryptoFrame(0, other.subarray(0, 50))] });
    expect(() => new QuicInitialReader().push(datagram)).toThrow(/COPROXY_TLS_QUIC_MALFORMED: CRYPTO byte \d+ sent twice/);
  });

  it('bounds the CRYPTO stream: data past the hello bound is QUIC_TOO_LARGE, never buffered', () => {
    const datagram = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(70_000, Buffer.from([1]))] });
    expect(() => new QuicInitialReader().push(datagram)).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicTooLarge }));
  });

  it('bounds the datagrams read before the hello is whole', () => {
    const reader = new QuicInitialReader({ maxDatagrams: 3 });
    for (let i = 0; i < 3; i++) expect(reader.push(buildInitialDatagram({ dcid, packetNumber: i, frames: [Buffer.from([0x01])] })).done).toBe(false);
    expect(() => reader.push(buildInitialDatagram({ dcid, packetNumber: 3, frames: [Buffer.from([0x01])] }))).toThrow(
      expect.objectContaining({ code: TlsErrorCode.QuicTooLarge }),
    );
  });

  it('refuses a frame an Initial may not carry (STREAM)', () => {
    const datagram = buildInitialDatagram({ dcid, packetNumber: 0, frames: [Buffer.from([0x08, 0x00, 0x01, 0x61])] });
    expect(() => new QuicInitialReader().push(datagram)).toThrow(/COPROXY_TLS_QUIC_MALFORMED: frame type 0x8 is not allowed in an Initial/);
  });

  it('refuses an Initial datagram under 1200 bytes, and tells a non-QUIC datagram apart', () => {
    const packet = buildInitial({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message)] });
    expect(() => new QuicInitialReader().push(packet.subarray(0, 600))).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicMalformed }));
    expect(() => new QuicInitialReader().push(Buffer.from('GET / HTTP/1.1\r\n\r\n'))).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicNotInitial }));
    const unknownVersion = Buffer.from(buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, message)] }));
    unknownVersion.writeUInt32BE(0x1a2a3a4a, 1);
    expect(() => new QuicInitialReader().push(unknownVersion)).toThrow(expect.objectContaining({ code: TlsErrorCode.QuicUnsupportedVersion }));
  });

  it('reads the hello inside with the TCP parser: a hello with two server_name extensions is COPROXY_TLS_DUPLICATE_EXTENSION', () => {
    const duplicate = sampleHelloMessage('quic.example', ['h3'], { duplicateSni: true });
    const datagram = buildInitialDatagram({ dcid, packetNumber: 0, frames: [cryptoFrame(0, duplicate)] });
    expect(() => new QuicInitialReader().push(datagram)).toThrow(expect.objectContaining({ code: TlsErrorCode.DuplicateExtension }));
  });

  it('gives QuicInitialError the package error shape', () => {
    const error = new QuicInitialError(TlsErrorCode.QuicMalformed, 'x', 1, 2);
    expect(error).toMatchObject({ name: 'QuicInitialError', code: 'COPROXY_TLS_QUIC_MALFORMED', datagram: 1, offset: 2 });
  });
});
