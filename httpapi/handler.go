package httpapi

import (
	"net/http"

	"github.com/notifyd/notifyd/backlog"
)

// Config is what NewHandler needs.
type Config struct {
	// Registry is the source of every answer: in notifyd, the registry.
	Registry Source
	// Required is --require. The expected workers (--expect, as
	// X_NOTIFYD_EXPECT= changes it) come with the registry's summary.
	Required int
	// MessageCounts returns the datagrams received by result, for
	// notifyd_messages_total; nil leaves that metric out.
	MessageCounts func() map[string]uint64
	// Queues reads the application's listen queues for /status, /metrics
	// and ?verbose; nil when none are watched. The plain health answer never
	// reads them.
	Queues *backlog.Reader
}

// NewHandler routes GET /status and GET /metrics to their handlers, and
// every other method and path to the health check.
func NewHandler(cfg Config) http.Handler {
	health := NewHealth(cfg.Registry, cfg.Required)
	health.queues = cfg.Queues
	named := map[string]http.Handler{
		"/status": statusHandler{reg: cfg.Registry, required: cfg.Required, queues: cfg.Queues},
		"/metrics": metricsHandler(collector{reg: cfg.Registry, required: cfg.Required,
			messages: cfg.MessageCounts, queues: cfg.Queues}),
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, ok := named[r.URL.Path]
		if !ok {
			health.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, r.URL.Path+" answers GET and HEAD only", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}
