import { createHash } from 'node:crypto';
import { type ClientHello, EXT_ALPN, EXT_SERVER_NAME, isGrease } from './client-hello.js';

/**
 * JA3 (Salesforce, 2017): the decimal fields `version,ciphers,extensions,groups,point
 * formats`, values joined by '-', GREASE removed, and the MD5 of that text.
 */
export function ja3(hello: ClientHello): { readonly text: string; readonly hash: string } {
  const list = (values: readonly number[]): string => values.filter((v) => !isGrease(v)).join('-');
  const text = [
    hello.legacyVersion,
    list(hello.cipherSuites),
    list(hello.extensions),
    list(hello.supportedGroups),
    hello.ecPointFormats.join('-'),
  ].join(',');
  return { text, hash: createHash('md5').update(text).digest('hex') };
}

const JA4_VERSIONS = new Map([
  [0x0304, '13'],
  [0x0303, '12'],
  [0x0302, '11'],
  [0x0301, '10'],
  [0x0300, 's3'],
]);

const hex4 = (value: number): string => value.toString(16).padStart(4, '0');
const sha12 = (text: string): string => (text === '' ? '000000000000' : createHash('sha256').update(text).digest('hex').slice(0, 12));

/**
 * JA4 (FoxIO, JA4+ spec) for a ClientHello: `<t|q><version><d|i><ciphers><extensions><alpn>`
 * `_<sha256 of the sorted cipher list, 12 hex>_<sha256 of the sorted extensions (SNI and
 * ALPN left out) and the signature algorithms in order, 12 hex>`, GREASE ignored
 * throughout. The first letter is the transport: `t` for TCP, `q` for QUIC.
 */
export function ja4(hello: ClientHello, transport: 'tcp' | 'quic' = 'tcp'): string {
  const versions = hello.supportedVersions.filter((v) => !isGrease(v));
  const version = JA4_VERSIONS.get(versions.length > 0 ? Math.max(...versions) : hello.legacyVersion) ?? '00';
  const ciphers = hello.cipherSuites.filter((v) => !isGrease(v));
  const extensions = hello.extensions.filter((v) => !isGrease(v));
  const count = (n: number): string => String(Math.min(n, 99)).padStart(2, '0');
  // 'd' when the server_name extension is there at all (the spec's test), even if it names no host.
  const a = `${transport === 'quic' ? 'q' : 't'}${version}${hello.extensions.includes(EXT_SERVER_NAME) ? 'd' : 'i'}${count(ciphers.length)}${count(extensions.length)}${alpnCode(hello.alpn[0])}`;
  const b = sha12(ciphers.map(hex4).sort().join(','));
  const sortedExtensions = extensions.filter((v) => v !== EXT_SERVER_NAME && v !== EXT_ALPN).map(hex4).sort().join(',');
  const signatures = hello.signatureAlgorithms.filter((v) => !isGrease(v)).map(hex4).join(',');
  const c = sha12(signatures === '' ? sortedExtensions : `${sortedExtensions}_${signatures}`);
  return `${a}_${b}_${c}`;
}

/** First and last character of the first ALPN value; its first and last hex digits if either is not alphanumeric; `00` without ALPN. */
function alpnCode(first: string | undefined): string {
  if (first === undefined || first.length === 0) return '00';
  const head = first[0]!;
  const tail = first[first.length - 1]!;
  if (/^[A-Za-z0-9]$/.test(head) && /^[A-Za-z0-9]$/.test(tail)) return `${head}${tail}`;
  const hex = Buffer.from(first, 'latin1').toString('hex');
  return `${hex[0]}${hex[hex.length - 1]}`;
}
