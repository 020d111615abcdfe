// An HTTPS origin for the kernel tests, inside the test's network namespace. Its
// certificates come from a CA the test created (argv[2], a CertificateAuthority directory,
// opened with the built package): one leaf per SNI name, so a client that trusts that CA
// verifies the origin, and nobody else's leaf passes for it.
//
// Every request is answered with what the origin saw, as JSON (method, url, host, the
// body's length, the SNI, the local address, and the SHA-256 fingerprint of the
// certificate it presented), and reported the same over IPC ({ request }), so a test knows
// which requests reached it and over which TLS session.
//
// argv[2]: CA dir; argv[3..]: addresses to listen on; argv[last]: the port. Sends
// { ready: true } over IPC once listening on all; exits when the test goes away.
import https from 'node:https';
import { CertificateAuthority } from '../../dist/index.js';

const [dir, ...args] = process.argv.slice(2);
const port = Number(args.pop());
const ca = await CertificateAuthority.open({ dir });

function answer(req, res) {
  let bytes = 0;
  req.on('data', (chunk) => (bytes += chunk.length));
  req.on('end', () => {
    const seen = {
      method: req.method,
      url: req.url,
      host: req.headers.host,
      bytes,
      sni: req.socket.servername,
      local: req.socket.localAddress,
      certificate: req.socket.getCertificate()?.fingerprint256,
    };
    process.send({ request: seen });
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(seen));
  });
}

const SNICallback = (name, callback) => ca.contextFor(name).then((context) => callback(null, context), callback);
let pending = args.length;
for (const host of args) {
  https.createServer({ SNICallback }, answer).listen({ host, port }, () => --pending === 0 && process.send({ ready: true }));
}
process.on('disconnect', () => process.exit(0));
