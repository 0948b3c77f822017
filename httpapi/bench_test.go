package httpapi_test

import (
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
