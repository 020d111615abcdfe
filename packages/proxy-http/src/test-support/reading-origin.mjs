// An HTTP origin for the differential proof (src/differential/): Node's own http.Server in
// a process of its own, answering each request with what it parsed, as JSON in the
// X-Echo header (base64, so a HEAD answer carries it too): method, url, headers, and the
// path as an application that reads it with WHATWG's URL would. Sends { ready: port } over
// IPC once listening on 127.0.0.1; exits when its parent goes away.
import http from 'node:http';

const server = http.createServer((req, res) => {
  let whatwgPath;
  try {
    whatwgPath = new URL(req.url, 'http://origin.invalid').pathname;
  } catch {
    whatwgPath = null; // a target WHATWG cannot parse: nothing for an app to route on
  }
  const seen = { method: req.method, url: req.url, headers: req.headers, whatwgPath };
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'x-origin': 'node', 'x-echo': Buffer.from(JSON.stringify(seen)).toString('base64'), 'content-length': 0 });
    res.end();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.send({ ready: server.address().port }));
process.on('disconnect', () => process.exit(0));
