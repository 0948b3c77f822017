package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
)

// DefaultBind is the address of the HTTP health check when --bind (or
// $NOTIFYD_BIND) does not say otherwise: loopback, because only the load
// balancer's local agent or a proxy on the host should ask.
const DefaultBind = "127.0.0.1:8001"

// ErrNotStatus is wrapped by DecodeStatus when a document is not notifyd's
// GET /status: a wrong URL, most likely, or something else on the port.
var ErrNotStatus = errors.New("not notifyd's /status")

// StatusAnswer is a GET /status document as a client decoded it. Older
// notifyd versions leave some fields out, and those then read as zero in
// Status; the flags tell such a zero apart from one notifyd reported.
type StatusAnswer struct {
	Status
	// Activity is true when the document has in_flight and busy_workers.
	Activity bool
	// WorkerActivity says, by worker, whether it has in_flight and
	// requests.
	WorkerActivity []bool
	// QueueTime says, by listen queue, whether it has oldest_seconds, peak
	// and drops.
	QueueTime []bool
}

// statusKeys is which of a document's keys are there and not null.
type statusKeys struct {
	Ready       *json.RawMessage `json:"ready"`
	Required    *json.RawMessage `json:"required"`
	Expected    *json.RawMessage `json:"expected"`
	Healthy     *json.RawMessage `json:"healthy"`
	InFlight    *json.RawMessage `json:"in_flight"`
	BusyWorkers *json.RawMessage `json:"busy_workers"`
	Workers     *[]struct {
		PID      *json.RawMessage `json:"pid"`
		InFlight *json.RawMessage `json:"in_flight"`
		Requests *json.RawMessage `json:"requests"`
	} `json:"workers"`
	ListenQueues []struct {
		OldestSeconds *json.RawMessage `json:"oldest_seconds"`
		Peak          *json.RawMessage `json:"peak"`
		Drops         *json.RawMessage `json:"drops"`
	} `json:"listen_queues"`
}

// DecodeStatus decodes a GET /status document and checks that it is one:
// ready, required, expected, healthy and workers are present, and every
// worker has a pid and a state. Any other error wraps ErrNotStatus and says
// what was wrong.
func DecodeStatus(body []byte) (StatusAnswer, error) {
	var a StatusAnswer
	if err := json.Unmarshal(body, &a.Status); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			err = fmt.Errorf("a JSON %s, not an object", typeErr.Value)
			if typeErr.Field != "" {
				err = fmt.Errorf("a JSON %s as %s", typeErr.Value, typeErr.Field)
			}
		}
		return StatusAnswer{}, fmt.Errorf("%w: %v", ErrNotStatus, err)
	}
	var k statusKeys
	if err := json.Unmarshal(body, &k); err != nil {
		return StatusAnswer{}, fmt.Errorf("%w: %v", ErrNotStatus, err)
	}
	if k.Ready == nil || k.Required == nil || k.Expected == nil || k.Healthy == nil || k.Workers == nil {
		return StatusAnswer{}, fmt.Errorf("%w: no ready, required, expected, healthy or workers field", ErrNotStatus)
	}
	a.Activity = k.InFlight != nil && k.BusyWorkers != nil
	for i, w := range *k.Workers {
		if w.PID == nil || a.Workers[i].PID <= 0 || a.Workers[i].State == "" {
			return StatusAnswer{}, fmt.Errorf("%w: a worker without a pid or state", ErrNotStatus)
		}
		a.WorkerActivity = append(a.WorkerActivity, w.InFlight != nil && w.Requests != nil)
	}
	for _, q := range k.ListenQueues {
		a.QueueTime = append(a.QueueTime, q.OldestSeconds != nil && q.Peak != nil && q.Drops != nil)
	}
	return a, nil
}
