// A minimal HTTP/3 origin for coproxy-tls's QUIC relay kernel test
// (src/quic-server.kernel.test.ts), on Debian's quic-go 0.29 (package
// golang-github-lucas-clemente-quic-go-dev) and Go 1.19 (golang-go). Built offline in
// GOPATH mode, no module fetches:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o quic-server .
//
// It serves HTTP/3 on a UDP address with a certificate and key read from PEM files:
//
//	GET /            an HTML page whose script fetches /api/proto and writes what came back
//	                 into #result, so that Chromium's --dump-dom shows it
//	GET /api/proto   JSON {"proto": r.Proto}
//
// With -tcp it also serves the same handler over HTTPS on TCP at the same address, each
// response advertising HTTP/3 (Alt-Svc), for a browser that learns h3 the usual way.
//
// Every request is one JSON line on stdout ({"request": {...}}), and so is every ClientHello
// its QUIC side reads ({"quicHello": {"sni", "alpn" (offered), "remote"}}: quic-go 0.29's
// http3 gives a handler an empty TLS state, so this is where the server's view of the
// name is). Once the UDP socket is bound, {"ready": true, "listening": "<address>"} is printed. Errors go to stderr, and any
// failure to start exits 1.
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/lucas-clemente/quic-go/http3"
)

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>quic-go origin</title></head>
<body><p id="result">script pending</p>
<script>
fetch('/api/proto?from=script')
  .then((response) => response.json())
  .then((body) => { document.getElementById('result').textContent = 'protocol: ' + body.proto; })
  .catch((error) => { document.getElementById('result').textContent = 'fetch failed: ' + error; });
</script></body></html>
`

// stdout carries one JSON object a line; handlers run concurrently.
var out = struct {
	sync.Mutex
	enc *json.Encoder
}{enc: json.NewEncoder(os.Stdout)}

func emit(v interface{}) {
	out.Lock()
	defer out.Unlock()
	if err := out.enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "quic-server: cannot write stdout:", err)
		os.Exit(1)
	}
}

type requestLine struct {
	Method string `json:"method"`
	URL    string `json:"url"`
	Proto  string `json:"proto"`
	Host   string `json:"host"`
	Remote string `json:"remote"`
}

type helloLine struct {
	SNI    string   `json:"sni"`
	ALPN   []string `json:"alpn"`
	Remote string   `json:"remote"`
}

func handler(altSvc func(http.Header)) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("content-type", "text/html; charset=utf-8")
		w.Header().Set("cache-control", "no-store")
		fmt.Fprint(w, page)
	})
	mux.HandleFunc("/api/proto", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		w.Header().Set("cache-control", "no-store")
		_ = json.NewEncoder(w).Encode(map[string]string{"proto": r.Proto})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		line := requestLine{Method: r.Method, URL: r.URL.RequestURI(), Proto: r.Proto, Host: r.Host, Remote: r.RemoteAddr}
		emit(map[string]requestLine{"request": line})
		altSvc(w.Header())
		mux.ServeHTTP(w, r)
	})
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "quic-server: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:443", "UDP address to serve HTTP/3 on (and TCP with -tcp)")
	certFile := flag.String("cert", "", "PEM certificate chain")
	keyFile := flag.String("key", "", "PEM private key")
	withTCP := flag.Bool("tcp", false, "also serve HTTPS on TCP at -addr, advertising h3 with Alt-Svc")
	flag.Parse()
	if *certFile == "" || *keyFile == "" {
		fail("-cert and -key are required")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fail("cannot load the certificate and key: %v", err)
	}
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			emit(map[string]helloLine{"quicHello": {SNI: hello.ServerName, ALPN: hello.SupportedProtos, Remote: hello.Conn.RemoteAddr().String()}})
			return nil, nil // this config, as it is
		},
	}

	server := &http3.Server{Addr: *addr, TLSConfig: tlsConfig}
	server.Handler = handler(func(http.Header) {})

	udp, err := net.ListenPacket("udp", *addr)
	if err != nil {
		fail("cannot listen on UDP %s: %v", *addr, err)
	}
	errs := make(chan error, 2)
	go func() { errs <- server.Serve(udp) }()

	if *withTCP {
		tcp, err := net.Listen("tcp", *addr)
		if err != nil {
			fail("cannot listen on TCP %s: %v", *addr, err)
		}
		_, port, _ := net.SplitHostPort(*addr)
		altSvc := fmt.Sprintf(`h3=":%s"; ma=86400`, port)
		https := &http.Server{
			Handler:   handler(func(h http.Header) { h.Set("alt-svc", altSvc) }),
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
		}
		go func() { errs <- https.ServeTLS(tcp, "", "") }()
	}

	emit(map[string]interface{}{"ready": true, "listening": udp.LocalAddr().String()})
	fail("stopped: %v", <-errs)
}
