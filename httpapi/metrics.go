package httpapi

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/registry"
)

// collector reads the registry at scrape time, so the metrics cost nothing
// between scrapes and are never out of step with the health answer.
type collector struct {
	reg      Source
	required int
	messages func() map[string]uint64
	queues   *backlog.Reader
}

var (
	descWorkers   = prometheus.NewDesc("notifyd_workers", "Registered workers by state.", []string{"state"}, nil)
	descRequired  = prometheus.NewDesc("notifyd_workers_required", "Ready workers needed for a healthy answer (--require).", nil, nil)
	descExpected  = prometheus.NewDesc("notifyd_workers_expected", "Workers the server is configured to run (--expect).", nil, nil)
	descHealthy   = prometheus.NewDesc("notifyd_healthy", "1 when the health check answers 200, else 0.", nil, nil)
	descDraining  = prometheus.NewDesc("notifyd_draining", "1 while the instance is drained, else 0.", nil, nil)
	descReloading = prometheus.NewDesc("notifyd_reloading", "1 while an instance reload keeps the stopping generation's ready count, else 0.", nil, nil)
	descStarting  = prometheus.NewDesc("notifyd_starting", "1 until --require workers have first been ready since notifyd started, else 0.", nil, nil)
	descMessages  = prometheus.NewDesc("notifyd_messages_total", "Datagrams received, by result: accepted, barrier, or the reason of a rejection.", []string{"result"}, nil)
	descExits     = prometheus.NewDesc("notifyd_worker_exits_total", "Registered workers found to have exited without STOPPING=1.", nil, nil)
	descFileError = prometheus.NewDesc("notifyd_state_file_errors_total", "State file writes and removals that failed.", nil, nil)
	descQueueLen  = prometheus.NewDesc("notifyd_listen_queue_length", "Connections waiting in the application's listen queue for a worker to accept them.", []string{"addr"}, nil)
	descQueueMax  = prometheus.NewDesc("notifyd_listen_queue_limit", "The listen queue's limit, the backlog as the kernel capped it.", []string{"addr"}, nil)
	descInFlight  = prometheus.NewDesc("notifyd_requests_in_flight", "Requests the registered workers are serving now, as they last reported.", nil, nil)
	descBusy      = prometheus.NewDesc("notifyd_workers_busy", "Registered workers with at least one request in flight.", nil, nil)
	descRequests  = prometheus.NewDesc("notifyd_requests_total", "Requests the workers finished, as they reported them; workers that left included.", nil, nil)
	descBusyTime  = prometheus.NewDesc("notifyd_busy_seconds_total", "Seconds the workers spent with at least one request in flight, summed over workers; workers that left included.", nil, nil)
	descBackwards = prometheus.NewDesc("notifyd_activity_backwards_total", "Activity reports ignored because a counter went backwards for the same worker, or grew faster than a worker can (one request and one microsecond busy per microsecond).", nil, nil)
	descListening = prometheus.NewDesc("notifyd_listen_queue_listening", "1 when something listens on the address, else 0.", []string{"addr"}, nil)
	descOldest    = prometheus.NewDesc("notifyd_listen_queue_oldest_seconds", "How long the oldest connection in the listen queue has waited for a worker; 0 when none waits.", []string{"addr"}, nil)
	descPeak      = prometheus.NewDesc("notifyd_listen_queue_peak", "The longest listen queue seen in the last 60 s, sampled while every worker is busy.", []string{"addr"}, nil)
	descDrops     = prometheus.NewDesc("notifyd_listen_queue_drops_total", "Connections the kernel dropped because the TCP listen queue was full (a Unix socket makes clients wait instead).", []string{"addr"}, nil)
)

// states are the values of notifyd_workers' state label, all always present.
var states = []registry.State{registry.Starting, registry.Ready, registry.Reloading, registry.Hung, registry.Failed}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWorkers, descRequired, descExpected, descHealthy, descDraining, descReloading, descStarting, descMessages, descExits, descFileError,
		descInFlight, descBusy, descRequests, descBusyTime, descBackwards, descQueueLen, descQueueMax, descListening,
		descOldest, descPeak, descDrops} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	byState := make(map[registry.State]int, len(states))
	for _, w := range c.reg.Workers() {
		byState[w.State]++
	}
	for _, st := range states {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(byState[st]), st.String())
	}
	s := c.reg.Summary()
	ch <- prometheus.MustNewConstMetric(descRequired, prometheus.GaugeValue, float64(c.required))
	ch <- prometheus.MustNewConstMetric(descExpected, prometheus.GaugeValue, float64(s.Expected))
	ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, boolFloat(healthy(s, c.required)))
	ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, boolFloat(s.Draining))
	ch <- prometheus.MustNewConstMetric(descReloading, prometheus.GaugeValue, boolFloat(s.Reload.Active))
	ch <- prometheus.MustNewConstMetric(descStarting, prometheus.GaugeValue, boolFloat(s.Starting))
	if c.messages != nil {
		for result, n := range c.messages() {
			ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(n), result)
		}
	}
	ch <- prometheus.MustNewConstMetric(descExits, prometheus.CounterValue, float64(c.reg.Exits()))
	ch <- prometheus.MustNewConstMetric(descFileError, prometheus.CounterValue, float64(c.reg.StateFileErrors()))
	a := c.reg.Activity()
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(a.InFlight))
	ch <- prometheus.MustNewConstMetric(descBusy, prometheus.GaugeValue, float64(a.BusyWorkers))
	ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(a.Requests))
	ch <- prometheus.MustNewConstMetric(descBusyTime, prometheus.CounterValue, seconds(a.BusyUSec))
	ch <- prometheus.MustNewConstMetric(descBackwards, prometheus.CounterValue, float64(a.Backwards))
	c.collectQueues(ch)
}

// collectQueues reports the watched listen queues. A read the kernel
// refused leaves them out of this scrape, as Prometheus expects of a value
// that is not known; the next scrape tries again.
func (c collector) collectQueues(ch chan<- prometheus.Metric) {
	if c.queues == nil {
		return
	}
	queues, err := c.queues.Cached(queueMaxAge)
	if err != nil {
		return
	}
	// An address nobody listens on reads 0 and 0, as in /status, so that
	// each series stays put while the application restarts.
	for _, q := range queues {
		ch <- prometheus.MustNewConstMetric(descListening, prometheus.GaugeValue, boolFloat(q.Listening), q.Addr)
		ch <- prometheus.MustNewConstMetric(descQueueLen, prometheus.GaugeValue, float64(q.Queued), q.Addr)
		ch <- prometheus.MustNewConstMetric(descQueueMax, prometheus.GaugeValue, float64(q.Limit), q.Addr)
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, q.OldestSeconds, q.Addr)
		ch <- prometheus.MustNewConstMetric(descPeak, prometheus.GaugeValue, float64(q.Peak), q.Addr)
		if q.CountsDrops() {
			ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(q.Drops), q.Addr)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler serves the Prometheus text format: notifyd's own metrics
// plus the client library's process and Go runtime collectors.
func metricsHandler(c collector) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
