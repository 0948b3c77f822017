// Command bare is the benchmarks' reference server: notifyd's HTTP server
// setup (httpapi.Server) and runtime settings (footprint.Set), answering every
// request 200 with a constant body and the headers of notifyd's answer, and
// no health logic; with -plain, a zero http.Server with Go's defaults, the
// plainest net/http server there is. It listens on 127.0.0.1 at a port the kernel chooses,
// prints the address as its first line, and stops at SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/internal/footprint"
)

// The answer, made once as notifyd makes its own: the handler allocates
// nothing.
var (
	body      = []byte("1 workers ready\n")
	textPlain = []string{"text/plain; charset=utf-8"}
	noStore   = []string{"no-store"}
	length    = []string{"16"}
)

func main() {
	plain := flag.Bool("plain", false, "serve with a zero http.Server and Go's default runtime settings: no timeouts, no connection cap, GOGC 100")
	flag.Parse()
	if !*plain {
		footprint.Set()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr())
	answer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"], h["Cache-Control"], h["Content-Length"] = textPlain, noStore, length
		w.Write(body)
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *plain {
		srv := &http.Server{Handler: answer}
		context.AfterFunc(ctx, func() { srv.Close() })
		if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
			fmt.Fprintln(os.Stderr, "bare:", err)
			os.Exit(1)
		}
		return
	}
	if err := httpapi.NewServer(ln, answer, slog.New(slog.NewTextHandler(io.Discard, nil))).Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bare:", err)
		os.Exit(1)
	}
}
