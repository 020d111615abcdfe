import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import { CaError, CertificateAuthority } from './ca.js';
import { tempDir, within } from './test-support/harness.js';

/** Serves `context` on loopback once and returns what a client trusting `caPem` saw connecting as `servername`. */
async function presented(context: tls.SecureContext, caPem: string, servername: string | undefined): Promise<{ authorized: boolean; error: string | undefined; certificate: tls.PeerCertificate }> {
  // A TLS server socket on each connection, as the proxy's bump does: SNI or not, this context.
  const server = net.createServer((raw) => {
    const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
    secure.on('error', () => secure.destroy()); // the client's verdict is what the test reads
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const socket = tls.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port, ca: caPem, rejectUnauthorized: false, ...(servername !== undefined && { servername }) });
    const connected = new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    await within(connected, 5000, 'the TLS handshake');
    const verdict = { authorized: socket.authorized, error: socket.authorizationError?.toString(), certificate: socket.getPeerCertificate() };
    socket.destroy();
    return verdict;
  } finally {
    server.close();
  }
}

describe('CertificateAuthority', () => {
  it('creates a CA on first use: ca.key mode 0600, ca.crt PEM that Node parses as a CA certificate', async () => {
    using dir = tempDir();
    const caDir = path.join(dir.path, 'ca');

    const ca = await CertificateAuthority.open({ dir: caDir, subject: 'CN=test CA,O=coproxy tests' });

    expect(fs.statSync(ca.keyPath).mode & 0o777).toBe(0o600);
    expect(fs.statSync(caDir).mode & 0o777).toBe(0o700);
    const pem = fs.readFileSync(ca.certPath, 'utf8');
    expect(pem).toMatch(/^-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n$/);
    expect(pem).toBe(ca.certPem);
    const certificate = new X509Certificate(pem);
    expect(certificate.ca).toBe(true);
    expect(certificate.subject).toBe('CN=test CA\nO=coproxy tests');
    expect(certificate.checkIssued(certificate)).toBe(true);
    expect(certificate.verify(certificate.publicKey)).toBe(true);
    expect(fs.readFileSync(ca.keyPath, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it('opens the same CA again from its directory', async () => {
    using dir = tempDir();

    const first = await CertificateAuthority.open({ dir: dir.path });
    const again = await CertificateAuthority.open({ dir: dir.path, subject: 'CN=ignored, the CA exists' });

    expect(again.certPem).toBe(first.certPem);
    expect(new X509Certificate(again.certPem).subject).toBe('CN=coproxy-tls local CA');
  });

  it('refuses a CA key that others can read, naming the file', async () => {
    using dir = tempDir();
    const ca = await CertificateAuthority.open({ dir: dir.path });
    fs.chmodSync(ca.keyPath, 0o644);

    const error = await CertificateAuthority.open({ dir: dir.path }).then(
      () => undefined,
      (e: unknown) => e,
    );

    expect(error).toBeInstanceOf(CaError);
    expect(error).toMatchObject({ code: 'COPROXY_TLS_CA_ERROR', path: ca.keyPath });
    expect((error as Error).message).toContain('mode 644');
  });

  it('mints leaves for DNS names and IP addresses that verify against ca.crt', async () => {
    using dir = tempDir();
    const ca = await CertificateAuthority.open({ dir: dir.path });

    const named = await presented(await ca.contextFor('Leaf.Example'), ca.certPem, 'leaf.example');
    const address = await presented(await ca.contextFor('127.0.0.1'), ca.certPem, undefined);
    const wrongName = await presented(await ca.contextFor('leaf.example'), ca.certPem, 'other.example');

    expect(named).toMatchObject({ authorized: true, certificate: { subjectaltname: 'DNS:leaf.example', subject: { CN: 'leaf.example' } } });
    expect(named.certificate.issuer.CN).toBe('coproxy-tls local CA');
    expect(address).toMatchObject({ authorized: true, certificate: { subjectaltname: 'IP Address:127.0.0.1' } });
    // The chain verifies; the name check is the client's (tls.checkServerIdentity), and it fails.
    expect(tls.checkServerIdentity('other.example', wrongName.certificate)).toBeInstanceOf(Error);
  });

  it('caches leaves by name, least recently used dropped first, never more than cacheSize', async () => {
    using dir = tempDir();
    const ca = await CertificateAuthority.open({ dir: dir.path, cacheSize: 2 });

    const a = ca.contextFor('a.example');
    expect(ca.contextFor('A.EXAMPLE')).toBe(a); // names compare without case
    const b = ca.contextFor('b.example');
    expect(ca.contextFor('a.example')).toBe(a); // 'a' is now the most recently used
    const c = ca.contextFor('c.example'); // drops 'b'
    expect(ca.cachedLeaves).toBe(2);

    expect(ca.contextFor('a.example')).toBe(a);
    const bAgain = ca.contextFor('b.example');
    expect(bAgain).not.toBe(b);
    expect(ca.cachedLeaves).toBe(2);
    await Promise.all([a, b, c, bAgain]);
  });
});
