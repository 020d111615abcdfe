import { X509Certificate as NodeX509, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import * as x509 from '@peculiar/x509';
import { TlsErrorCode, TlsProxyError } from './errors.js';
import { BUMP_SERVER_PROFILE } from './tls-profile.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

// @peculiar/x509 builds certificates on WebCrypto: Node's own implementation.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY = 86_400_000;

/** The CA files could not be created, read or used; `path` says which. */
export class CaError extends TlsProxyError<typeof TlsErrorCode.CaError> {
  override readonly name = 'CaError';
  constructor(
    message: string,
    readonly path: string,
    options?: ErrorOptions,
  ) {
    super(TlsErrorCode.CaError, `${message} (${path})`, options);
  }
}

export interface CertificateAuthorityOptions {
  /** Where `ca.crt` (public, PEM) and `ca.key` (PKCS#8 PEM, mode 0600) live. Created on first use. */
  readonly dir: string;
  /** Distinguished name of a CA created here. Default `CN=coproxy-tls local CA`. */
  readonly subject?: string;
  /** Leaf certificates kept in memory (least recently used dropped first). Default 1000. */
  readonly cacheSize?: number;
}

/**
 * The local CA that bump mode mints leaf certificates from. Created on first use (P-256,
 * ten years) in `dir`, private key mode 0600, and exported as `ca.crt` so a user can
 * trust it. Leaves are minted on the fly for the client's SNI (or the destination IP),
 * valid a week back and a year ahead, all on one leaf key pair (signing is the only cost
 * per host), and cached by name, bounded.
 */
export class CertificateAuthority {
  readonly certPath: string;
  readonly keyPath: string;
  private readonly cache = new Map<string, Promise<tls.SecureContext>>();
  private readonly cacheSize: number;

  private constructor(
    private readonly caCert: x509.X509Certificate,
    private readonly caKey: CryptoKey,
    readonly certPem: string,
    private readonly leafKeys: CryptoKeyPair,
    private readonly leafKeyPem: string,
    dir: string,
    cacheSize: number,
  ) {
    this.certPath = path.join(dir, 'ca.crt');
    this.keyPath = path.join(dir, 'ca.key');
    this.cacheSize = cacheSize;
  }

  static async open(options: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    const dir = path.resolve(options.dir);
    const certPath = path.join(dir, 'ca.crt');
    const keyPath = path.join(dir, 'ca.key');
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (error) {
      throw new CaError('cannot create the CA directory', dir, { cause: error });
    }
    if (!fs.existsSync(keyPath)) await create(certPath, keyPath, options.subject ?? 'CN=coproxy-tls local CA');
    const mode = fs.statSync(keyPath).mode & 0o777;
    if (process.platform !== 'win32' && (mode & 0o077) !== 0) {
      throw new CaError(`the CA key is readable by others (mode ${mode.toString(8)}); chmod 600 it`, keyPath);
    }
    let certPem: string;
    let caCert: x509.X509Certificate;
    let caKey: CryptoKey;
    try {
      certPem = fs.readFileSync(certPath, 'utf8');
      caCert = new x509.X509Certificate(certPem);
      const der = createPrivateKey(fs.readFileSync(keyPath)).export({ format: 'der', type: 'pkcs8' });
      caKey = await webcrypto.subtle.importKey('pkcs8', der, ALGORITHM, false, ['sign']);
    } catch (error) {
      throw new CaError('cannot load the CA certificate and key', dir, { cause: error });
    }
    const leafKeys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']));
    const leafKeyPem = pem('PRIVATE KEY', Buffer.from(await webcrypto.subtle.exportKey('pkcs8', leafKeys.privateKey)));
    return new CertificateAuthority(caCert, caKey, certPem, leafKeys, leafKeyPem, dir, options.cacheSize ?? 1000);
  }

  /** A TLS context presenting a leaf for `name` (a DNS name or an IP address), chained to this CA. */
  contextFor(name: string): Promise<tls.SecureContext> {
    const key = name.toLowerCase();
    const cached = this.cache.get(key);
    if (cached !== undefined) {
      this.cache.delete(key); // re-inserted: most recently used last
      this.cache.set(key, cached);
      return cached;
    }
    // The leaf's context is bump's server side: it follows the TLS profile (tls-profile.ts).
    const minted = this.mint(key).then((certPem) => tls.createSecureContext({ ...BUMP_SERVER_PROFILE, key: this.leafKeyPem, cert: certPem + this.certPem }));
    minted.catch(() => this.cache.delete(key)); // a failed mint is not cached; the caller sees the rejection
    this.cache.set(key, minted);
    while (this.cache.size > this.cacheSize) this.cache.delete(this.cache.keys().next().value!);
    return minted;
  }

  get cachedLeaves(): number {
    return this.cache.size;
  }

  private async mint(name: string): Promise<string> {
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
      subject: `CN=${name}`,
      issuer: this.caCert.subject,
      notBefore: new Date(now - 7 * DAY),
      notAfter: new Date(now + 365 * DAY),
      signingAlgorithm: ALGORITHM,
      publicKey: this.leafKeys.publicKey,
      signingKey: this.caKey,
      extensions: [
        new x509.SubjectAlternativeNameExtension([net.isIP(name) === 0 ? { type: 'dns', value: name } : { type: 'ip', value: name }]),
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
        await x509.AuthorityKeyIdentifierExtension.create(this.caCert),
      ],
    });
    return cert.toString('pem') + '\n';
  }
}

async function create(certPath: string, keyPath: string, subject: string): Promise<void> {
  const keys = (await webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']));
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'),
    name: subject,
    notBefore: new Date(now - DAY),
    notAfter: new Date(now + 3650 * DAY),
    signingAlgorithm: ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const keyPem = pem('PRIVATE KEY', Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)));
  // The key first, exclusively and private from its first byte; the certificate after,
  // so a crash in between leaves a key without a certificate, never the reverse.
  try {
    fs.writeFileSync(keyPath, keyPem, { mode: 0o600, flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return; // another process created it meanwhile
    throw new CaError('cannot write the CA key', keyPath, { cause: error });
  }
  fs.writeFileSync(certPath, cert.toString('pem') + '\n', { mode: 0o644 });
  // Checked with Node's own parser: what Node's TLS stack will be given.
  new NodeX509(fs.readFileSync(certPath));
}

function pem(label: string, der: Buffer): string {
  const body = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}
