package protocol

import (
	"os"
	"path/filepath"
	"strings"
)

// DefaultSocketPath is where notifyd listens unless told otherwise:
// notify.sock in systemd's $RUNTIME_DIRECTORY when it is set, else in the
// current directory.
func DefaultSocketPath() string {
	return filepath.Join(RuntimeDirectory(), "notify.sock")
}

// RuntimeDirectory is the first directory of $RUNTIME_DIRECTORY, which
// systemd sets for units with RuntimeDirectory=, or "." outside such a unit.
func RuntimeDirectory() string {
	if dir, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); dir != "" {
		return dir
	}
	return "."
}
