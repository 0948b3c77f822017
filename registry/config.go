//go:build linux

package registry

import (
	"errors"
	"log/slog"
	"slices"
	"time"
)

// Access says who may send notifications about which pid.
type Access uint8

const (
	// SameUID lets root name any pid and any other sender only pids whose
	// real uid is the sender's uid.
	SameUID Access = iota
	// RootOnly accepts messages from uid 0 only.
	RootOnly
	// All skips the ownership check, for containers whose processes share no
	// user database with notifyd.
	All
)

// accessNames are the --access values, by Access.
var accessNames = []string{SameUID: "same-uid", RootOnly: "root", All: "all"}

func (a Access) String() string { return name(accessNames, a) }

// ParseAccess parses the --access values: same-uid, root or all.
func ParseAccess(s string) (Access, error) {
	return parseName[Access](accessNames, s, "must be same-uid, root or all")
}

// Detection says how the registry learns that a worker exited.
type Detection uint8

const (
	// Auto uses pidfds where the kernel has them and sweeps otherwise.
	Auto Detection = iota
	// Pidfd waits on one pidfd per worker in an epoll loop: every exit is
	// seen the moment it happens, and an idle registry never wakes up.
	Pidfd
	// Sweep checks every worker with kill(0) and /proc every ReapInterval.
	Sweep
)

// detectionNames are the --exit-detection values, by Detection.
var detectionNames = []string{Auto: "auto", Pidfd: "pidfd", Sweep: "sweep"}

func (d Detection) String() string { return name(detectionNames, d) }

// ParseDetection parses the --exit-detection values: auto, pidfd or sweep.
func ParseDetection(s string) (Detection, error) {
	return parseName[Detection](detectionNames, s, "must be auto, pidfd or sweep")
}

// name returns v's name in names, indexed by value, or "unknown".
func name[T ~uint8](names []string, v T) string {
	if int(v) < len(names) {
		return names[v]
	}
	return "unknown"
}

// parseName returns the value whose name in names is s, or an error that
// says what is allowed.
func parseName[T ~uint8](names []string, s, allowed string) (T, error) {
	if i := slices.Index(names, s); i >= 0 {
		return T(i), nil
	}
	return 0, errors.New(allowed)
}

// Config is what New needs. Dir and Filename are required.
type Config struct {
	// Dir is the state directory. It is created if missing.
	Dir string
	// Filename is the state file name, with {} where the pid goes.
	Filename string
	// Access says who may speak for which pid.
	Access Access
	// Detection picks how exits are seen; ReapInterval is the sweep period.
	Detection    Detection
	ReapInterval time.Duration
	// WatchdogUSec is the heartbeat deadline of workers that declare none;
	// zero means none.
	WatchdogUSec uint64
	// Logger receives the registry's log lines; nil discards them.
	Logger *slog.Logger
	// Required is the number of ready workers the health answer needs
	// (--require): a reload ends once that many workers of the new
	// generation are ready, and the instance has started once that many are.
	Required int
	// Expected is the number of workers the server is configured to run
	// (--expect), until an X_NOTIFYD_EXPECT= message changes it.
	Expected int
	// MainPID is the application's main process (the gunicorn master), whose
	// RELOADING=1 reloads the instance; 0 when not known, and then a
	// process that is not a registered worker and sends RELOADING=1 about
	// itself is taken for it.
	MainPID int
	// ReloadGrace is how long a reload keeps the stopping generation's count
	// while the new generation boots; zero turns that off.
	ReloadGrace time.Duration
	// OnChange, if set, is called with every new Summary, under the
	// registry's lock: it must return quickly and not call the registry.
	OnChange func(Summary)
	// OnAllBusy, if set, is called when AllBusy may have become true: a
	// worker took a request, or a ready worker left. It is called under
	// the registry's lock: it must return quickly and not call the
	// registry.
	OnAllBusy func()

	// retryInterval overrides how often failed state file changes are
	// tried again; tests set it.
	retryInterval time.Duration
}
