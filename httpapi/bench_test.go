package httpapi_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/registry"
)

// BenchmarkHealthListenQueue measures the plain health answer over loopback
// HTTP with and without --listen-queue, side by side: the plain answer must
// not read the queues, so the two should be the same.
func BenchmarkHealthListenQueue(b *testing.B) {
	reg, err := registry.New(registry.Config{Dir: b.TempDir(), Filename: ".gunicorn.worker.{}", Detection: registry.Pidfd})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer app.Close()
	addr, err := backlog.ParseAddr(app.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		queues *backlog.Reader
	}{
		{"plain", nil},
		{"listen-queue", backlog.NewReader([]backlog.Addr{addr})},
	} {
		b.Run(bc.name, func(b *testing.B) {
			srv := httptest.NewServer(httpapi.NewHandler(httpapi.Config{Registry: reg, Required: 0, Queues: bc.queues}))
			defer srv.Close()
			client := srv.Client()
			b.ResetTimer()
			for b.Loop() {
				resp, err := client.Get(srv.URL + "/")
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkHealth measures what one health answer costs notifyd, with
// -benchmem: "handler" is the handler alone, "http" a whole keep-alive
// request over loopback TCP from a client that allocates nothing, so that
// the allocations reported are the server's. Every allocation is garbage
// the collector must come back for, and under a burst of health checks the
// garbage is what sets notifyd's peak memory.
func BenchmarkHealth(b *testing.B) {
	reg, err := registry.New(registry.Config{Dir: b.TempDir(), Filename: ".gunicorn.worker.{}", Detection: registry.Pidfd})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	h := httpapi.NewHandler(httpapi.Config{Registry: reg, Required: 0})
	const want = "HTTP/1.1 200 OK\r\n"

	b.Run("handler", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		w := &headerOnlyWriter{header: http.Header{}}
		b.ReportAllocs()
		for b.Loop() {
			clear(w.header)
			h.ServeHTTP(w, req)
			if w.code != http.StatusOK {
				b.Fatalf("status %d", w.code)
			}
		}
	})
	b.Run("http", func(b *testing.B) {
		srv := httptest.NewServer(h)
		defer srv.Close()
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		req := []byte("GET / HTTP/1.1\r\nHost: notifyd\r\n\r\n")
		buf := make([]byte, 4096)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := conn.Write(req); err != nil {
				b.Fatal(err)
			}
			// The answer is one small segment; its body ends the read.
			n, err := conn.Read(buf)
			if err != nil {
				b.Fatal(err)
			}
			if !bytes.HasPrefix(buf[:n], []byte(want)) || !bytes.HasSuffix(buf[:n], []byte("workers ready\n")) {
				b.Fatalf("answer %q", buf[:n])
			}
		}
	})
}

// headerOnlyWriter is a ResponseWriter that keeps the status and headers
// and drops the body, allocating nothing itself.
type headerOnlyWriter struct {
	header http.Header
	code   int
}

func (w *headerOnlyWriter) Header() http.Header         { return w.header }
func (w *headerOnlyWriter) WriteHeader(code int)        { w.code = code }
func (w *headerOnlyWriter) Write(p []byte) (int, error) { return len(p), nil }
