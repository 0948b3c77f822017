// Package e2e holds notifyd's end-to-end tests: the built notifyd and notify
// binaries against real gunicorn, Debian's systemd-notify, curl and real
// processes. It has no code of its own outside its tests.
//
// A tool the tests need that is missing skips the test, except under CI=true,
// where it fails it: CI must never pass by testing less.
package e2e
