package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"time"
)

// bareCommand is the hidden subcommand that runs the bare server, so that it
// is a process of its own, like notifyd.
const bareCommand = "bare-server"

// Server settings of the bare server: those of notifyd's health server
// (httpapi.Serve), so that both answer under the same conditions.
const (
	bareReadHeaderTimeout = 5 * time.Second
	bareReadTimeout       = 10 * time.Second
	bareWriteTimeout      = 10 * time.Second
	bareIdleTimeout       = 60 * time.Second
	bareMaxHeaderBytes    = 16 << 10
	bareShutdownTimeout   = 5 * time.Second
)

// serveBare runs the bare server: net/http answering every request with 200,
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
	srv := &http.Server{
		Handler:                      newConstant(*body),
		ReadHeaderTimeout:            bareReadHeaderTimeout,
		ReadTimeout:                  bareReadTimeout,
		WriteTimeout:                 bareWriteTimeout,
		IdleTimeout:                  bareIdleTimeout,
		MaxHeaderBytes:               bareMaxHeaderBytes,
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     log.New(io.Discard, "", 0),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("%s: serve: %w", bareCommand, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), bareShutdownTimeout)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("%s: serve: %w", bareCommand, serr)
	}
	if err != nil {
		return fmt.Errorf("%s: shut down: %w", bareCommand, err)
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
