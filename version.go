// Package notifyd holds what the whole project shares: its version.
//
// The version has one source, the VERSION file beside this one. go build
// and go run embed it here; the Python wheel (pyproject.toml) and the
// Debian package (packaging/build-deb) read the same file.
package notifyd

import (
	_ "embed"
	"strings"
)

//go:embed VERSION
var version string

// Version is notifyd's version, such as "0.6.0".
var Version = strings.TrimSpace(version)
