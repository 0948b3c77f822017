// Package footprint holds notifyd's runtime memory settings. notifyd is a
// sidecar: it runs beside every instance of an application, often one per
// pod, so what it keeps resident is multiplied by the fleet, while the load
// it answers is a load balancer's few probes a second.
package footprint

import (
	"os"
	"runtime/debug"
)

// GCPercent is notifyd's GOGC. The heap may grow to 1.5 times what is live
// before the collector runs, where Go's default of 100 lets it double. The
// health answer itself allocates nothing, but net/http allocates about 2 KB
// for every request it reads, so a burst of health checks is a stream of
// garbage, and GOGC is what bounds the memory it takes. It costs CPU only
// under thousands of health checks a second, which no load balancer sends
// (docs/PERFORMANCE.md, "Footprint").
//
// No soft memory limit is set: near a limit the collector runs without
// pause, and the live heap grows with the workers registered, so any one
// limit would throttle a notifyd holding many workers.
const GCPercent = 50

// Set applies GCPercent unless the environment sets GOGC, which the Go
// runtime has then applied already. GOMEMLIMIT, when set, is applied by the
// runtime too.
func Set() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}
