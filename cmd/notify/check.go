package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// maxCheckBody bounds what check reads of an answer: the health body is one
// short line, and a verbose one a few.
const maxCheckBody = 4 << 10

// runCheck asks notifyd's health check once: exit 0 when it answers 200, 1
// with the answer's body when it does not. It is a probe for images that
// have no curl: a Docker HEALTHCHECK or a Kubernetes exec probe.
func runCheck(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("notify check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	url := fs.String("url", defaultCheckURL(), "health check URL (default from $NOTIFYD_BIND)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(stdout, "Usage: notify check [--url URL] [--timeout D]\n\nExit 0 when notifyd's health check answers 200, else 1 with its answer.")
			return errHelp
		}
		return usagef("%v (see notify check --help)", err)
	}
	if fs.NArg() > 0 {
		return usagef("notify check takes no arguments, got %q", fs.Arg(0))
	}
	if *timeout <= 0 {
		return usagef("--timeout %s: must be a positive duration such as 5s", *timeout)
	}
	client := http.Client{Timeout: *timeout}
	resp, err := client.Get(*url)
	if err != nil {
		return fmt.Errorf("check %s: %w", *url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxCheckBody))
	// One line, whatever the body: a verbose answer has one per check.
	text := strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(body)), "\n", " | ")), " ")
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("unhealthy: %s: %s", resp.Status, text)
	}
	fmt.Fprintln(stdout, text)
	return nil
}

// defaultCheckURL follows notifyd's --bind through its twin $NOTIFYD_BIND;
// an address that listens on every interface is asked on loopback.
func defaultCheckURL() string {
	bind := os.Getenv("NOTIFYD_BIND")
	if bind == "" {
		bind = "127.0.0.1:8001"
	}
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return "http://" + bind + "/"
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/"
}
