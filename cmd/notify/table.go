//go:build linux

package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/httpapi"
)

// ANSI colours for a terminal.
const (
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	red    = "\x1b[31m"
	reset  = "\x1b[0m"
)

// stateColour is the colour of a worker state: green counts, yellow may
// count soon, red does not.
var stateColour = map[string]string{
	"ready":     green,
	"starting":  yellow,
	"reloading": yellow,
	"hung":      red,
	"failed":    red,
}

// writeStatus writes doc as a table a person reads at a glance: one line per
// worker, then a summary line, then one line per watched listen queue. The
// activity columns appear only when notifyd reports worker activity.
func writeStatus(w io.Writer, doc httpapi.StatusAnswer, now time.Time, term terminal) error {
	activity := slices.Contains(doc.WorkerActivity, true)
	var b strings.Builder
	if len(doc.Workers) == 0 {
		b.WriteString("no workers registered\n")
	} else {
		header := []string{"PID", "STATE", "READY FOR"}
		if activity {
			header = append(header, "IN FLIGHT", "REQUESTS")
		}
		rows := [][]string{append(header, "STATUS")}
		for i, wk := range doc.Workers {
			row := []string{strconv.Itoa(wk.PID), wk.State, readyFor(wk, now)}
			if activity && doc.WorkerActivity[i] {
				row = append(row, strconv.FormatUint(uint64(wk.InFlight), 10), strconv.FormatUint(wk.Requests, 10))
			} else if activity {
				row = append(row, "-", "-")
			}
			rows = append(rows, append(row, printable(wk.Status)))
		}
		writeTable(&b, rows, term)
	}
	b.WriteString(summary(doc, term))
	for i, q := range doc.ListenQueues {
		switch {
		case !q.Listening:
			fmt.Fprintf(&b, "listen queue %s: nothing listens there\n", q.Addr)
		case q.Limit == 0:
			fmt.Fprintf(&b, "listen queue %s: %d queued, limit unknown%s\n", q.Addr, q.Queued, queueTime(q, doc.QueueTime[i]))
		default:
			fmt.Fprintf(&b, "listen queue %s: %d of %d queued%s\n", q.Addr, q.Queued, q.Limit, queueTime(q, doc.QueueTime[i]))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// queueTime is what a listen queue line adds when notifyd reports queue
// time: ", oldest 2.1s, peak 5 in 60s, 3 dropped" (no drops for a Unix
// socket, which makes clients wait instead).
func queueTime(q backlog.Queue, reported bool) string {
	if !reported {
		return ""
	}
	s := fmt.Sprintf(", oldest %.1fs, peak %d in 60s", q.OldestSeconds, q.Peak)
	if !strings.HasPrefix(q.Addr, "unix:") {
		s += fmt.Sprintf(", %d dropped", q.Drops)
	}
	return s
}

// writeTable lines up rows in columns two spaces apart. On a terminal the
// state column is coloured and the last column, the free status text, is
// cut to the terminal's width.
func writeTable(b *strings.Builder, rows [][]string, term terminal) {
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row[:len(row)-1] {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for r, row := range rows {
		var line strings.Builder
		used := 0
		for i, cell := range row[:len(row)-1] {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)+2)
			if c := stateColour[cell]; term.colour && r > 0 && i == 1 && c != "" {
				cell = c + cell + reset
			}
			line.WriteString(cell + pad)
			used += widths[i] + 2
		}
		last := row[len(row)-1]
		if term.width > 0 {
			last = truncate(last, max(term.width-used, 0))
		}
		line.WriteString(last)
		// A row whose status text is empty ends in the padding.
		b.WriteString(strings.TrimRight(line.String(), " ") + "\n")
	}
}

// summary is the line under the table: healthy or not, ready against
// required and expected, starting or reloading, draining, and busy when
// notifyd reports activity.
func summary(doc httpapi.StatusAnswer, term terminal) string {
	verdict, colour := "unhealthy", red
	if doc.Healthy {
		verdict, colour = "healthy", green
	}
	if term.colour {
		verdict = colour + verdict + reset
	}
	parts := []string{fmt.Sprintf("%d ready", doc.Ready), fmt.Sprintf("%d required", doc.Required), fmt.Sprintf("%d expected", doc.Expected)}
	switch r := doc.Reload; {
	case r != nil:
		parts = append(parts, fmt.Sprintf("reloading (%d of the new workers ready, %d kept until %s)",
			r.Fresh, r.Kept, r.GraceEnds.Local().Format(time.TimeOnly)))
	case doc.Starting:
		parts = append(parts, "starting")
	}
	if doc.Draining {
		parts = append(parts, "draining")
	} else {
		parts = append(parts, "not draining")
	}
	if doc.Activity {
		parts = append(parts, fmt.Sprintf("%d busy", doc.BusyWorkers), fmt.Sprintf("%d in flight", doc.InFlight))
	}
	// On a terminal too narrow for one line, the parts go on indented
	// continuation lines rather than past the edge.
	var b strings.Builder
	b.WriteString(verdict + ":")
	used := utf8.RuneCountInString(verdict) + 1
	if term.colour {
		used -= len(colour) + len(reset)
	}
	for i, p := range parts {
		if i < len(parts)-1 {
			p += ","
		}
		if n := utf8.RuneCountInString(p) + 1; term.width > 0 && used+n > term.width && used > 2 {
			b.WriteString("\n ")
			used = 1
		}
		b.WriteString(" " + p)
		used += utf8.RuneCountInString(p) + 1
	}
	return b.String() + "\n"
}

// readyFor is how long a ready worker has been ready, or "-".
func readyFor(wk httpapi.WorkerStatus, now time.Time) string {
	if wk.State != "ready" || wk.ReadyAt == nil {
		return "-"
	}
	return age(now.Sub(*wk.ReadyAt))
}

// age writes d in its two largest units: 42s, 3m07s, 5h02m, 12d03h.
func age(d time.Duration) string {
	s := int64(max(d, 0) / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// printable replaces control characters in a worker's status text, which
// any worker may set: escape sequences must not reach an operator's terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}
