package backlog

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRefused pins which failures send TCP reads to /proc: those that say
// sock_diag is not available to this process, not those of one read.
func TestRefused(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{os.NewSyscallError("socket", unix.EPERM), true},
		{os.NewSyscallError("socket", unix.EACCES), true},
		{os.NewSyscallError("socket", unix.EPROTONOSUPPORT), true},
		{os.NewSyscallError("socket", unix.EAFNOSUPPORT), true},
		{fmt.Errorf("dump: %w", unix.ENOENT), true}, // no diag module for the family
		{os.NewSyscallError("socket", unix.EMFILE), false},
		{os.NewSyscallError("recvmsg", unix.ENOBUFS), false},
		{unix.EINVAL, false},
		{errors.New("malformed netlink message"), false},
		{nil, false},
	} {
		if got := refused(tt.err); got != tt.want {
			t.Errorf("refused(%v) = %t, want %t", tt.err, got, tt.want)
		}
	}
}
