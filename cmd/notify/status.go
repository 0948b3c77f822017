//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/notifyd/notifyd/httpapi"
)

// maxStatusBody bounds what status and wait read of /status: about 250 bytes
// a worker, so far more than the 10000 workers notifyd is measured with.
const maxStatusBody = 32 << 20

// askTimeout is how long one ask of /status may take, as for notify check.
const askTimeout = 5 * time.Second

// askFloor is the least time notify wait gives an ask, even when less of
// the wait is left: notifyd answers in milliseconds.
const askFloor = 100 * time.Millisecond

// badAnswer is an answer that is not notifyd's /status: a wrong --url, most
// likely, or something else listening on notifyd's port.
type badAnswer struct {
	url    string
	reason string // what follows the URL in the message
	// retry is true for 5xx answers: notifyd, or a proxy in front of it,
	// may be restarting.
	retry bool
}

func (e *badAnswer) Error() string { return e.url + " " + e.reason }

// askStatus fetches and decodes /status once. Besides the document it
// returns the body as it came, for --json. A *badAnswer error means
// something answered that is not notifyd's /status; any other error means
// nothing answered.
func askStatus(url string, timeout time.Duration) (httpapi.StatusAnswer, []byte, error) {
	a, err := get(url, timeout, maxStatusBody)
	if err != nil {
		return httpapi.StatusAnswer{}, nil, err
	}
	if a.code != http.StatusOK {
		reason := "answered " + a.status
		if text := oneLine(a.body); text != "" {
			reason += ": " + truncate(text, 200)
		}
		return httpapi.StatusAnswer{}, nil, &badAnswer{url: url, reason: reason, retry: a.code >= 500}
	}
	if a.truncated {
		return httpapi.StatusAnswer{}, nil, &badAnswer{url: url, reason: fmt.Sprintf("answered more than %d bytes: not notifyd's /status", maxStatusBody)}
	}
	doc, err := httpapi.DecodeStatus(a.body)
	if err != nil {
		return httpapi.StatusAnswer{}, nil, &badAnswer{url: url, reason: "is " + err.Error()}
	}
	return doc, a.body, nil
}

// runStatus prints /status for a person: exit 0 when it could ask, 1 with
// the reason when it could not.
func runStatus(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("notify status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	base := fs.String("url", defaultURL(), "notifyd's HTTP address, from $NOTIFYD_BIND if set; /status is asked relative to it")
	asJSON := fs.Bool("json", false, "print /status as notifyd answers it")
	if err := parseSubcommand(fs, args, stdout, "notify status [--url URL] [--json]",
		"Show notifyd's workers, one a line, and a summary. Exit 0 when notifyd answered,\n1 when it could not be asked, 2 on a usage error."); err != nil {
		return err
	}
	url, err := statusURL("url", *base)
	if err != nil {
		return err
	}
	doc, raw, err := askStatus(url, askTimeout)
	var bad *badAnswer
	switch {
	case errors.As(err, &bad):
		return err
	case err != nil:
		return fmt.Errorf("status: %w", err)
	case *asJSON:
		_, err := stdout.Write(raw)
		return err
	}
	return writeStatus(stdout, doc, time.Now(), terminalOf(stdout))
}

// terminal is how a table may look on standard output.
type terminal struct {
	colour bool
	width  int // columns; 0 means no limit
}

// terminalOf says whether w is a terminal, and how wide. A pipe or a file
// gets neither colour nor a table cut to a width; NO_COLOR and TERM=dumb
// turn colour off on a terminal too.
func terminalOf(w io.Writer) terminal {
	f, ok := w.(*os.File)
	if !ok {
		return terminal{}
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return terminal{}
	}
	return terminal{
		colour: os.Getenv("NO_COLOR") == "" && os.Getenv("TERM") != "dumb",
		width:  int(ws.Col),
	}
}

// truncate cuts s to at most n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n <= 1 {
		return string(r[:n])
	}
	return string(r[:n-1]) + "…"
}
