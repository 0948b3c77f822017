//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/notifyd/notifyd/httpapi"
)

// answer is one HTTP answer from notifyd, or from whatever --url points at.
type answer struct {
	code   int
	status string // such as "500 Internal Server Error"
	body   []byte
	// truncated says the body was longer than the limit get was given.
	truncated bool
}

// get asks url once, within timeout, and keeps at most limit bytes of the
// body. It is the one way check, status and wait talk to notifyd. The error
// is the HTTP client's, which names the method and URL.
func get(url string, timeout time.Duration, limit int64) (answer, error) {
	client := http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return answer{}, fmt.Errorf("read the answer of %s: %w", url, err)
	}
	a := answer{code: resp.StatusCode, status: resp.Status, body: body}
	if int64(len(body)) > limit {
		a.body, a.truncated = body[:limit], true
	}
	return a, nil
}

// oneLine squeezes a body into one line for an error message or check's
// output: a verbose health answer has one line per check.
func oneLine(body []byte) string {
	s := strings.ReplaceAll(strings.TrimSpace(string(body)), "\n", " | ")
	return strings.Join(strings.Fields(s), " ")
}

// defaultURL follows notifyd's --bind through its twin $NOTIFYD_BIND; an
// address that listens on every interface is asked on loopback.
func defaultURL() string {
	bind := os.Getenv("NOTIFYD_BIND")
	if bind == "" {
		bind = httpapi.DefaultBind
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

// statusURL is where /status is, given notifyd's address as --url: the path
// "status" resolved against it, so http://127.0.0.1:8001/,
// http://127.0.0.1:8001/status and http://127.0.0.1:8001/healthz all ask
// http://127.0.0.1:8001/status, and http://lb/notifyd/ asks
// http://lb/notifyd/status.
func statusURL(flagName, base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usagef("--%s %q: want notifyd's address as an http:// URL, such as %s", flagName, base, defaultURL())
	}
	return u.ResolveReference(&url.URL{Path: "status"}).String(), nil
}
