package main

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd"
	"github.com/notifyd/notifyd/backlog"
	"github.com/notifyd/notifyd/registry"
)

// clearEnv unsets every NOTIFYD_ variable for the test, so that the
// machine's environment cannot change what parseConfig reads.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "NOTIFYD_") || name == "RUNTIME_DIRECTORY" {
			t.Setenv(name, "")
			os.Unsetenv(name)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	clearEnv(t)
	c, err := parseConfig(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		socket: "notify.sock", socketMode: 0o660, socketGID: -1, bind: "127.0.0.1:8001",
		require: 1, expect: 1, agentFloor: 10, dir: ".",
		filename: ".gunicorn.worker.{}", logLevel: slog.LevelInfo, logFormat: logText, access: registry.SameUID,
		detection: registry.Auto, reapInterval: time.Second, systemdReady: readyWhenListening,
		reloadGrace: 10 * time.Second,
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		args  []string
		check func(c config) bool
	}{
		{"flag", nil, []string{"--require", "3"}, func(c config) bool { return c.require == 3 && c.expect == 3 }},
		{"environment twin", map[string]string{"NOTIFYD_REQUIRE": "4"}, nil, func(c config) bool { return c.require == 4 }},
		{"flag wins over its twin", map[string]string{"NOTIFYD_REQUIRE": "4"}, []string{"--require", "2"}, func(c config) bool { return c.require == 2 }},
		{"last flag wins", nil, []string{"--require", "2", "--require", "5"}, func(c config) bool { return c.require == 5 }},
		{"reload grace and main pid", map[string]string{"NOTIFYD_RELOAD_GRACE": "2s"}, []string{"--main-pid", "7"},
			func(c config) bool { return c.reloadGrace == 2*time.Second && c.mainPID == 7 }},
		{"reload grace off", nil, []string{"--reload-grace", "0s"}, func(c config) bool { return c.reloadGrace == 0 }},
		{"expect apart from require", nil, []string{"--require", "2", "--expect", "4"}, func(c config) bool { return c.require == 2 && c.expect == 4 }},
		{"socket mode", nil, []string{"--socket-mode", "0600"}, func(c config) bool { return c.socketMode == 0o600 }},
		{"socket group by number", nil, []string{"--socket-group", "0"}, func(c config) bool { return c.socketGID == 0 }},
		{"listen queues repeat", nil, []string{"--listen-queue", "127.0.0.1:8000", "--listen-queue", "unix:/run/a.sock"},
			func(c config) bool {
				return len(c.listenQueues) == 2 && c.listenQueues[1] == mustAddr("unix:/run/a.sock")
			}},
		{"a listen queue given twice is watched once", nil, []string{"--listen-queue", "unix:/run/a.sock", "--listen-queue", "127.0.0.1:8000", "--listen-queue", "unix:/run//a.sock"},
			func(c config) bool {
				return len(c.listenQueues) == 2 && c.listenQueues[0] == mustAddr("unix:/run/a.sock")
			}},
		{"listen queues from a list", map[string]string{"NOTIFYD_LISTEN_QUEUE": "127.0.0.1:8000, [::1]:8000,"}, nil,
			func(c config) bool { return len(c.listenQueues) == 2 && c.listenQueues[1] == mustAddr("[::1]:8000") }},
		{"listen queue flags replace the list", map[string]string{"NOTIFYD_LISTEN_QUEUE": "127.0.0.1:8000,127.0.0.1:8001"}, []string{"--listen-queue", "127.0.0.1:9000"},
			func(c config) bool {
				return len(c.listenQueues) == 1 && c.listenQueues[0] == mustAddr("127.0.0.1:9000")
			}},
		{"queue weight", nil, []string{"--agent-weight", "queue", "--listen-queue", "127.0.0.1:8000", "--agent-weight-floor", "0"},
			func(c config) bool { return c.weighByQueue && !c.weighByIdle && c.agentFloor == 0 }},
		{"idle and queue weight", nil, []string{"--agent-weight", "idle,queue", "--listen-queue", "127.0.0.1:8000"},
			func(c config) bool { return c.weighByQueue && c.weighByIdle }},
		{"exit with", map[string]string{"NOTIFYD_EXIT_WITH": "1"}, nil, func(c config) bool { return c.exitWith == 1 }},
		{"runtime directory", map[string]string{"RUNTIME_DIRECTORY": "/run/a:/run/b"}, nil,
			func(c config) bool { return c.dir == "/run/a" && c.socket == "/run/a/notify.sock" }},
		{"log level", nil, []string{"--log-level", "debug"}, func(c config) bool { return c.logLevel == slog.LevelDebug }},
		{"abstract socket", nil, []string{"--socket", "@notifyd"}, func(c config) bool { return c.socket == "@notifyd" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c, err := parseConfig(tt.args, &bytes.Buffer{})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Fatalf("config %+v", c)
			}
		})
	}
}

func mustAddr(s string) backlog.Addr {
	a, err := backlog.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"empty socket", nil, []string{"--socket", ""}, `--socket "": must be a path, or @name for an abstract socket`},
		{"bad mode", nil, []string{"--socket-mode", "0999"}, `--socket-mode "0999": must be octal permissions such as 0660`},
		{"bad mode from the twin", map[string]string{"NOTIFYD_SOCKET_MODE": "rw"}, nil, `NOTIFYD_SOCKET_MODE "rw": must be octal permissions such as 0660`},
		{"no such group", nil, []string{"--socket-group", "no-such-group-x"}, `--socket-group "no-such-group-x": no such group`},
		{"bad bind", nil, []string{"--bind", "8001"}, `--bind "8001": must be host:port, such as 127.0.0.1:8001 or [::1]:8001`},
		{"negative require", nil, []string{"--require", "-1"}, `--require "-1": must be a whole number, 0 or more`},
		{"bad require from the twin", map[string]string{"NOTIFYD_REQUIRE": "x"}, nil, `NOTIFYD_REQUIRE "x": must be a whole number, 0 or more`},
		{"bad expect", nil, []string{"--expect", "two"}, `--expect "two": must be a whole number, 0 or more`},
		{"bad agent bind", nil, []string{"--agent-bind", "8002"}, `--agent-bind "8002": must be host:port, such as 127.0.0.1:8002`},
		{"bad weight", nil, []string{"--agent-weight", "load"}, `--agent-weight "load": must be capacity, idle, queue, or idle,queue`},
		{"queue weight without a queue", nil, []string{"--agent-weight", "queue"}, `--agent-weight "queue": needs at least one --listen-queue to weigh by`},
		{"queue weight from the twin without a queue", map[string]string{"NOTIFYD_AGENT_WEIGHT": "queue"}, nil, `NOTIFYD_AGENT_WEIGHT "queue": needs at least one --listen-queue to weigh by`},
		{"floor above 100", nil, []string{"--agent-weight-floor", "101"}, `--agent-weight-floor "101": must be a whole percentage from 0 to 100`},
		{"bad listen queue from the twin", map[string]string{"NOTIFYD_LISTEN_QUEUE": "127.0.0.1:8000,nope"}, nil, `NOTIFYD_LISTEN_QUEUE "nope": `},
		{"empty dir", nil, []string{"--dir", ""}, `--dir "": must name a directory`},
		{"filename without placeholder", nil, []string{"--filename", "worker"}, `--filename "worker": `},
		{"filename with a directory", nil, []string{"--filename", "run/w.{}"}, `--filename "run/w.{}": must be a file name without '/'; put the directory in --dir`},
		{"bad log level", nil, []string{"--log-level", "loud"}, `--log-level "loud": must be debug, info, warn or error`},
		{"bad log format", nil, []string{"--log-format", "json"}, `--log-format "json": must be text or gunicorn`},
		{"bad access", nil, []string{"--access", "everyone"}, `--access "everyone": `},
		{"bad detection", nil, []string{"--exit-detection", "poll"}, `--exit-detection "poll": `},
		{"zero reap interval", nil, []string{"--reap-interval", "0s"}, `--reap-interval "0s": must be a positive duration such as 1s or 250ms`},
		{"bad watchdog", nil, []string{"--watchdog-usec", "-5"}, `--watchdog-usec "-5": must be a whole number of microseconds, 0 for off`},
		{"bad systemd gate", nil, []string{"--systemd-ready", "soon"}, `--systemd-ready "soon": must be listening or workers`},
		{"reload grace too long", nil, []string{"--reload-grace", "1h"}, `--reload-grace "1h": must be a duration from 0s to 10m0s, such as 10s`},
		{"negative reload grace", map[string]string{"NOTIFYD_RELOAD_GRACE": "-1s"}, nil, `NOTIFYD_RELOAD_GRACE "-1s": must be a duration from 0s to 10m0s, such as 10s`},
		{"bad main pid", nil, []string{"--main-pid", "x"}, `--main-pid "x": must be a process id, from 1 to 4194303`},
		{"main pid above pids", nil, []string{"--main-pid", "4294967297"}, `--main-pid "4294967297": must be a process id, from 1 to 4194303`},
		{"bad exit-with", nil, []string{"--exit-with", "0"}, `--exit-with "0": must be a process id, from 1 to 4194303`},
		{"exit-with above 32 bits", nil, []string{"--exit-with", "4294967297"}, `--exit-with "4294967297": must be a process id, from 1 to 4194303`},
		{"exit-with above pids", nil, []string{"--exit-with", "4194304"}, `--exit-with "4194304": must be a process id, from 1 to 4194303`},
		{"exit-with signed", nil, []string{"--exit-with", "+5"}, `--exit-with "+5": must be a process id, from 1 to 4194303`},
		{"unknown flag", nil, []string{"--requre", "2"}, `flag provided but not defined: -requre (see notifyd --help)`},
		{"argument", nil, []string{"serve"}, `unexpected argument "serve": notifyd takes only flags (see notifyd --help)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := parseConfig(tt.args, &bytes.Buffer{})
			var usage *usageError
			if !errors.As(err, &usage) || !strings.HasPrefix(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("parseConfig(%q) = %v, want one usage line starting %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestParseConfigReportsEveryMistake(t *testing.T) {
	clearEnv(t)
	t.Setenv("NOTIFYD_LOG_LEVEL", "loud")
	args := []string{"--check", "--bind", "127.0.0.1:70000", "--require", "x", "--filename", "w", "--listen-queue", "nowhere", "--listen-queue", "127.0.0.1:8000"}
	var out bytes.Buffer
	_, err := parseConfig(args, &out)
	var usage *usageError
	if !errors.As(err, &usage) {
		t.Fatalf("parseConfig(%q) = %v, want a usage error", args, err)
	}
	want := []string{`--bind "127.0.0.1:70000": `, `--require "x": `, `--listen-queue "nowhere": `, `--filename "w": `, `NOTIFYD_LOG_LEVEL "loud": `}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("parseConfig(%q) reported %d lines, want %d:\n%v", args, len(lines), len(want), err)
	}
	for i, line := range lines {
		if !strings.HasPrefix(line, want[i]) {
			t.Errorf("line %d = %q, want it to start %q", i, line, want[i])
		}
	}
	if out.Len() != 0 {
		t.Errorf("--check with mistakes printed %q", out.String())
	}
}

func TestParseConfigCheck(t *testing.T) {
	clearEnv(t)
	var out bytes.Buffer
	c, err := parseConfig([]string{"--check", "--require", "2"}, &out)
	if !errors.Is(err, errHelp) || out.String() != "notifyd: the configuration is valid\n" || c.require != 2 {
		t.Fatalf("--check = %v, %q, require %d", err, out.String(), c.require)
	}
}

func TestParseConfigHelpAndVersion(t *testing.T) {
	clearEnv(t)
	var out bytes.Buffer
	if _, err := parseConfig([]string{"--version"}, &out); !errors.Is(err, errHelp) || out.String() != "notifyd "+notifyd.Version+"\n" {
		t.Fatalf("--version = %v, %q", err, out.String())
	}
	out.Reset()
	if _, err := parseConfig([]string{"--help"}, &out); !errors.Is(err, errHelp) {
		t.Fatalf("--help = %v", err)
	}
	for _, o := range (&config{}).options() {
		if !strings.Contains(out.String(), "  --"+o.name+" ") {
			t.Errorf("--help does not list --%s:\n%s", o.name, out.String())
		}
	}
}
func TestParseWeight(t *testing.T) {
	tests := []struct {
		in          string
		idle, queue bool
		bad         bool
	}{
		{in: "capacity"},
		{in: "idle", idle: true},
		{in: "queue", queue: true},
		{in: "idle,queue", idle: true, queue: true},
		{in: "queue,idle", idle: true, queue: true},
		{in: "", bad: true},
		{in: "busy", bad: true},
		{in: "idle,idle", bad: true},
		{in: "capacity,idle", bad: true},
		{in: "idle,", bad: true},
		{in: "idle, queue", bad: true},
		{in: "IDLE", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			idle, queue, err := parseWeight(tt.in)
			if tt.bad {
				if err == nil || err.Error() != "must be capacity, idle, queue, or idle,queue" {
					t.Fatalf("parseWeight(%q) = %v, %v, %v; want the error", tt.in, idle, queue, err)
				}
				return
			}
			if err != nil || idle != tt.idle || queue != tt.queue {
				t.Fatalf("parseWeight(%q) = %v, %v, %v; want %v, %v, nil", tt.in, idle, queue, err, tt.idle, tt.queue)
			}
		})
	}
}
