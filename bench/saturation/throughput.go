package main

import (
	"context"
	"fmt"
	"strings"
)

// connMode is how wrk uses its connections.
type connMode struct {
	label  string
	header string // the request header that sets the mode, or ""
}

var connModes = []connMode{
	{label: "keep-alive"},
	{label: "new connection per request", header: "Connection: close"},
}

// contender is one server under wrk.
type contender struct {
	label string
	url   string
	rates [][]float64 // requests per second: per connection mode, one per round
}

// throughputResult is the throughput measurement: notifyd, bare, seed-style.
type throughputResult struct {
	contenders []*contender // notifyd, bare, seed-style
	bodyLen    int
}

// measureThroughput runs wrk against notifyd, a bare server and the
// seed-style server, in rounds that rotate through them, for each
// connection mode.
func measureThroughput(ctx context.Context, l *lab, st *stack, opts options) (*throughputResult, error) {
	res := &throughputResult{bodyLen: len(st.healthBody), contenders: []*contender{
		{label: "notifyd", url: st.notifydURL},
		{label: "bare net/http", url: st.bareURL},
		{label: "seed-style", url: st.seedURL},
	}}
	for _, c := range res.contenders {
		if _, err := awaitAnswer(ctx, c.label, c.url, st.healthBody); err != nil {
			return nil, err
		}
		c.rates = make([][]float64, len(connModes))
	}
	for m, mode := range connModes {
		if err := warmUp(ctx, l, res.contenders, mode, opts); err != nil {
			return nil, err
		}
		for r := range opts.rounds {
			if err := res.round(ctx, l, m, r, opts); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

// round runs wrk once against each contender, starting with a different one
// each round so that none always follows the same other.
func (res *throughputResult) round(ctx context.Context, l *lab, m, r int, opts options) error {
	mode := connModes[m]
	var done []string
	for i := range res.contenders {
		c := res.contenders[(r+i)%len(res.contenders)]
		w := wrkRun{url: c.url, header: mode.header, duration: opts.round, connections: opts.connections}
		rate, err := w.run(ctx, l.tools.wrk)
		if err != nil {
			return fmt.Errorf("%s, %s, round %d: %w", c.label, mode.label, r+1, err)
		}
		c.rates[m] = append(c.rates[m], rate)
		done = append(done, fmt.Sprintf("%s %.0f/s", c.label, rate))
	}
	l.Progress("throughput: %s: round %d/%d: %s", mode.label, r+1, opts.rounds, strings.Join(done, ", "))
	return nil
}

// warmUp runs wrk briefly against each contender, uncounted.
func warmUp(ctx context.Context, l *lab, cs []*contender, mode connMode, opts options) error {
	if opts.warmUp == 0 {
		return nil
	}
	l.Progress("throughput: %s: warming up", mode.label)
	for _, c := range cs {
		w := wrkRun{url: c.url, header: mode.header, duration: opts.warmUp, connections: opts.connections}
		if _, err := w.run(ctx, l.tools.wrk); err != nil {
			return fmt.Errorf("%s, %s, warm-up: %w", c.label, mode.label, err)
		}
	}
	return nil
}
