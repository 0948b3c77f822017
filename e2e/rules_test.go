package e2e

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// metricNames lists the metric names in a Prometheus text format body.
func metricNames(body string) map[string]bool {
	names := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, _, _ := strings.Cut(l, " ")
		name, _, _ = strings.Cut(name, "{")
		names[name] = true
	}
	return names
}

// activityMetrics are the worker-activity metrics the busy alert reads.
var activityMetrics = []string{"notifyd_requests_in_flight", "notifyd_workers_busy", "notifyd_requests_total", "notifyd_busy_seconds_total"}

// TestAlertRulesReadMetricsNotifydHas scrapes a notifyd with a watched
// listen queue: every notifyd_ metric the alerting rules read must be
// there, or an alert would stay silent for ever. The worker-activity
// metrics are exempt only while notifyd has none of them.
func TestAlertRulesReadMetricsNotifydHas(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(repoRoot, "deploy/prometheus/notifyd.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, l := range strings.Split(string(rules), "\n") {
		if e, ok := strings.CutPrefix(strings.TrimSpace(l), "expr:"); ok {
			exprs = append(exprs, e)
		}
	}
	used := regexp.MustCompile(`\bnotifyd_[a-z_]+\b`).FindAllString(strings.Join(exprs, "\n"), -1)
	if len(exprs) < 7 || len(used) < 8 {
		t.Fatalf("found %d expressions naming %v in the rules; the file's layout changed", len(exprs), used)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := startNotifyd(t, shortDir(t), "--listen-queue", ln.Addr().String())
	registerReady(t, d, sleeper(t))
	_, body := httpGet(t, "http://"+d.addr+"/metrics")
	have := metricNames(body)
	hasActivity := slices.ContainsFunc(activityMetrics, func(m string) bool { return have[m] })
	for _, m := range used {
		if !have[m] && (hasActivity || !slices.Contains(activityMetrics, m)) {
			t.Errorf("the alerting rules read %s, which notifyd's /metrics does not have", m)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// TestMetricsListenQueues fills a real listen queue that nobody accepts
// from: /metrics reports its length and limit as /status does, and an
// address nobody listens on as not listening.
func TestMetricsListenQueues(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	d := startNotifyd(t, shortDir(t), "--listen-queue", addr, "--listen-queue", "127.0.0.1:1")
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	var q []queueStatus
	waitFor(t, "3 connections in the listen queue", func() bool {
		q = d.queues(t)
		return len(q) == 2 && q[0].Queued == 3
	})
	if q[0].Limit == 0 || !q[0].Listening || q[1].Listening {
		t.Fatalf("/status listen_queues %+v, want %s listening with a limit, 127.0.0.1:1 not listening", q, addr)
	}
	_, body := httpGet(t, "http://"+d.addr+"/metrics")
	wantMetricLines(t, body,
		`notifyd_listen_queue_length{addr="`+addr+`"} 3`,
		`notifyd_listen_queue_limit{addr="`+addr+`"} `+strconv.Itoa(int(q[0].Limit)),
		`notifyd_listen_queue_listening{addr="`+addr+`"} 1`,
		`notifyd_listen_queue_length{addr="127.0.0.1:1"} 0`,
		`notifyd_listen_queue_listening{addr="127.0.0.1:1"} 0`,
	)
	promtoolCheck(t, need(t, "promtool"), body)
}
