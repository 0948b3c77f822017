package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/notifyd/notifyd/httpapi"
)

// bareCommand is the hidden subcommand that runs the bare server, so that it
// is a process of its own, like notifyd.
const bareCommand = "bare-server"

// serveBare runs the bare server: net/http, as notifyd's httpapi.Serve sets
// it up, answering every request with 200,
// a constant body and the headers notifyd's health answer has. It prints
// "bare server listening at http://ADDR" once it listens, then serves until
// ctx ends, at SIGINT or SIGTERM.
func serveBare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(bareCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	bind := fs.String("bind", "127.0.0.1:0", "address to listen on")
	body := fs.String("body", "", "the body of every answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *body == "" || fs.NArg() > 0 {
		return fmt.Errorf("%s: usage: %s -body TEXT [-bind ADDR]", bareCommand, bareCommand)
	}
	ln, err := net.Listen("tcp", *bind)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", bareCommand, *bind, err)
	}
	fmt.Fprintf(stdout, "bare server listening at http://%s\n", ln.Addr())
	// notifyd's own HTTP server, timeouts and all, with a handler that
	// answers a constant: both answer under the same conditions.
	if err := httpapi.NewServer(ln, newConstant(*body), slog.New(slog.DiscardHandler)).Serve(ctx); err != nil {
		return fmt.Errorf("%s: %w", bareCommand, err)
	}
	return nil
}

// constant answers every request 200 with one body.
type constant struct {
	body   []byte
	length []string
}

// Header values of notifyd's health answer; net/http only reads them.
var (
	bareTextPlain = []string{"text/plain; charset=utf-8"}
	bareNoStore   = []string{"no-store"}
)

func newConstant(body string) *constant {
	return &constant{body: []byte(body), length: []string{strconv.Itoa(len(body))}}
}

func (c *constant) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr["Content-Type"] = bareTextPlain
	hdr["Cache-Control"] = bareNoStore
	hdr["Content-Length"] = c.length
	w.WriteHeader(http.StatusOK)
	w.Write(c.body)
}
