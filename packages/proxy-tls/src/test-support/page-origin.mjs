// An HTTPS origin (h2 and HTTP/1.1 by ALPN) serving a web page with a script, for the Chromium kernel test, inside
// the test's network namespace. Its certificates come from a CA the test created (argv[2],
// a CertificateAuthority directory, opened with the built package).
//
// GET / is an HTML page whose script fetches /api/answer?from=script and writes what came
// back into the DOM (#result), so that Chromium's --dump-dom shows whether the fetch
// succeeded; it also fetches /api/secret?from=script, which a test's rule may block, and
// writes that response's status and text into #secret. Every request is reported over IPC ({ request }: method, url, SNI, ALPN, and
// the fingerprint of the certificate the origin presented).
//
// argv[2]: CA dir; argv[3]: address; argv[4]: port; argv[5], optional: an Alt-Svc header
// value sent with every response (the QUIC fallback test: `h3=":443"`). Sends { ready: true }
// over IPC once listening; exits when the test goes away.
import http2 from 'node:http2';
import { CertificateAuthority } from '../../dist/index.js';

const [dir, host, port, altSvc] = process.argv.slice(2);
const ca = await CertificateAuthority.open({ dir });

const ANSWER = 'forty-two';

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>coproxy page</title></head>
<body><p id="result">script pending</p><p id="secret">secret pending</p>
<script>
fetch('/api/answer?from=script', { headers: { 'x-from': 'page-script' } })
  .then((response) => response.json())
  .then((body) => { document.getElementById('result').textContent = 'fetched: ' + body.answer; })
  .catch((error) => { document.getElementById('result').textContent = 'fetch failed: ' + error; });
fetch('/api/secret?from=script', { headers: { 'x-from': 'page-script' } })
  .then((response) => response.text().then((text) => { document.getElementById('secret').textContent = 'secret: ' + response.status + ' ' + text.trim(); }))
  .catch((error) => { document.getElementById('secret').textContent = 'secret failed: ' + error; });
</script></body></html>
`;

// HTTP/2's compatibility request exposes the session's socket through a proxy object;
// the TLS socket itself is the session's.
const tlsSocket = (req) => (req.httpVersion === '2.0' ? req.stream.session.socket : req.socket);

function answer(req, res) {
  if (altSvc !== undefined) res.setHeader('alt-svc', altSvc);
  req.resume();
  req.on('end', () => {
    process.send({
      request: {
        method: req.method,
        url: req.url,
        host: req.headers.host,
        from: req.headers['x-from'],
        sni: tlsSocket(req).servername,
        alpn: tlsSocket(req).alpnProtocol,
        certificate: tlsSocket(req).getCertificate()?.fingerprint256,
      },
    });
    if (req.url === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
    } else if (req.url.startsWith('/api/secret')) {
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      res.end('the origin answered\n');
    } else if (req.url.startsWith('/api/answer')) {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({ answer: ANSWER }));
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
    }
  });
}

const SNICallback = (name, callback) => ca.contextFor(name).then((context) => callback(null, context), callback);
// h2 first, HTTP/1.1 too, as web servers offer them: what bump speaks to it is what its ALPN chose.
http2.createSecureServer({ SNICallback, allowHTTP1: true }, answer).listen({ host, port: Number(port) }, () => process.send({ ready: true }));
process.on('disconnect', () => process.exit(0));
