package protocol

import "errors"

// Rejection is an error that rejects a whole datagram. Its Reason is a short
// snake_case word for counting rejections by kind; the error text says what
// exactly was wrong.
type Rejection struct {
	Reason string
	text   string
}

// NewRejection returns a sentinel rejection. Callers wrap it with the details
// (fmt.Errorf("%w: ...", ErrX)) and match it with errors.Is.
func NewRejection(reason, text string) *Rejection {
	return &Rejection{Reason: reason, text: text}
}

func (r *Rejection) Error() string { return r.text }

// The reasons a datagram is rejected before it reaches the registry.
var (
	ErrTooLarge      = NewRejection("too_large", "datagram is larger than 4096 bytes")
	ErrControl       = NewRejection("control_truncated", "datagram carries more ancillary data than fits")
	ErrNUL           = NewRejection("nul_byte", "datagram holds a NUL byte before its end")
	ErrMalformed     = NewRejection("malformed", "not a KEY=VALUE assignment")
	ErrBadValue      = NewRejection("bad_value", "invalid value")
	ErrConflict      = NewRejection("conflict", "conflicting assignments")
	ErrBarrier       = NewRejection("bad_barrier", "BARRIER=1 must come alone with exactly one file descriptor")
	ErrNoCredentials = NewRejection("no_credentials", "datagram carries no sender pid: either it was queued before the socket had SO_PASSCRED and the sender attached no SCM_CREDENTIALS, or the sender's pid is not visible in notifyd's pid namespace (run notifyd in the workers' pid namespace or a parent of it; in Kubernetes, shareProcessNamespace: true)")
)

// ReasonOf returns the rejection reason of err, or "error" when err is not a
// Rejection.
func ReasonOf(err error) string {
	var r *Rejection
	if errors.As(err, &r) {
		return r.Reason
	}
	return "error"
}
