package main

import (
	"context"
	"fmt"
	"time"
)

// throughputConns is wrk's connections: a few more than the CPUs, so that a
// server is never idle waiting for its client.
const throughputConns = 8

func throughput(ctx context.Context, l *lab, o options) (*section, error) {
	a, bare, stop, err := startContenders(l)
	if err != nil {
		return nil, err
	}
	defer stop()
	contenders := []struct{ name, url string }{{"notifyd", a.notifyd.url}, {"bare server (the floor)", bare.url}, {"seed-style", a.seedURL}}

	s := &section{}
	s.p("## Health throughput\n\n")
	s.p("wrk against notifyd, the bare server (notifyd's HTTP server setup and runtime settings answering a constant body\n")
	s.p("of the same size, with no health logic: the floor) and the seed-style server, %d rounds of %s each, rotating,\n", o.rounds, o.round)
	s.p("after a warm-up of each. The seed-style server speaks HTTP/1.0 and closes every connection, so both modes open a\n")
	s.p("connection per request against it. notifyd / floor is the median of the rounds' ratios, each notifyd round\n")
	s.p("against the floor's round right after it; the medians of the requests/s are beside it.\n\n")
	s.p("| mode | command | notifyd (median requests/s) | floor | seed-style | notifyd / floor | notifyd / seed-style |\n")
	s.p("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
	var detail []string
	for _, closeEach := range []bool{false, true} {
		mode := "keep-alive"
		if closeEach {
			mode = "new connection per request"
		}
		for _, c := range contenders {
			if _, err := wrk(ctx, c.url, throughputConns, time.Second, closeEach); err != nil {
				return nil, err
			}
		}
		runs := make([][]float64, len(contenders))
		for range o.rounds {
			for i, c := range contenders {
				r, err := wrk(ctx, c.url, throughputConns, o.round, closeEach)
				if err != nil {
					return nil, err
				}
				runs[i] = append(runs[i], r)
			}
		}
		nd, fl, seed := median(runs[0]), median(runs[1]), median(runs[2])
		ratio := paired(runs[0], runs[1])
		s.p("| %s | `%s` | %.0f | %.0f | %.0f | %.3f | %.2f× |\n", mode, wrkCommand(throughputConns, o.round, closeEach), nd, fl, seed, ratio, paired(runs[0], runs[2]))
		for i, c := range contenders {
			detail = append(detail, fmt.Sprintf("%s, %s: %s", mode, c.name, rates(runs[i])))
		}
		s.goal(ratio >= 0.95, "throughput, "+mode+": notifyd ≥ 0.95× the floor",
			"%.3f (medians %.0f / %.0f requests/s)", ratio, nd, fl)
	}
	s.p("\nRounds, in requests/s:\n\n")
	for _, d := range detail {
		s.p("- %s\n", d)
	}
	return s, nil
}
