package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// helpFlag is a flag in the list --help prints: "  --name   what it does".
var helpFlag = regexp.MustCompile(`(?m)^\s+--([a-z][a-z0-9-]*)\s`)

// helpCommand is a command in notify's usage: "notify check [--url URL]".
var helpCommand = regexp.MustCompile(`(?m)^\s*(?:Usage:)?\s*notify ([a-z]+)\b`)

// manOption is an option the man page defines: a line that starts with it
// in bold, as in "**--socket**=*PATH*" or "**--drain**, **--undrain**".
var manOption = regexp.MustCompile(`\*\*--([a-z][a-z0-9-]*)\*\*`)

// helpOf runs a built binary with args and --help and lists the flags it
// prints, with the whole output.
func helpOf(t *testing.T, binary string, args ...string) ([]string, string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(bin, binary), append(args, "--help")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v --help: %v\n%s", binary, args, err, out)
	}
	var flags []string
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		flags = append(flags, m[1])
	}
	if len(flags) == 0 {
		t.Fatalf("%s %v --help lists no flags:\n%s", binary, args, out)
	}
	return flags, string(out)
}

// manSection returns the part of a man page source under heading (such as
// "# OPTIONS" or "## notify wait"), up to the next heading of that level or
// higher.
func manSection(t *testing.T, page, heading string) string {
	t.Helper()
	level := strings.Index(heading, " ")
	var b strings.Builder
	in := false
	for _, l := range strings.Split(page, "\n") {
		if strings.HasPrefix(l, "#") {
			hashes := len(l) - len(strings.TrimLeft(l, "#"))
			if in && hashes <= level {
				break
			}
			if l == heading {
				in = true
				continue
			}
		}
		if in {
			b.WriteString(l + "\n")
		}
	}
	if !in {
		t.Fatalf("the man page has no %q section", heading)
	}
	return b.String()
}

// defined lists the options a man page section defines, at the start of a
// line.
func defined(section string) []string {
	var opts []string
	for _, l := range strings.Split(section, "\n") {
		if !strings.HasPrefix(l, "**--") {
			continue
		}
		for _, m := range manOption.FindAllStringSubmatch(l, -1) {
			opts = append(opts, m[1])
		}
	}
	return opts
}

// wantSameOptions checks that a man page section defines exactly the flags
// --help prints (and --help, which the flag package answers itself).
func wantSameOptions(t *testing.T, what, source string, flags []string, section string) {
	t.Helper()
	documented := defined(section)
	for _, f := range flags {
		if !slices.Contains(documented, f) {
			t.Errorf("%s --help prints --%s, which %s does not define", what, f, source)
		}
	}
	for _, d := range documented {
		if d != "help" && !slices.Contains(flags, d) {
			t.Errorf("%s defines --%s, which %s --help does not print", source, d, what)
		}
	}
}

func readManSource(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs/man", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestManPagesFollowHelp fails when a flag that notifyd --help, notify
// --help or a notify command's --help prints is not in the man page
// source, or the source defines one they no longer have.
func TestManPagesFollowHelp(t *testing.T) {
	t.Run("notifyd", func(t *testing.T) {
		page := readManSource(t, "notifyd.8.md")
		flags, _ := helpOf(t, "notifyd")
		options := manSection(t, page, "# OPTIONS")
		wantSameOptions(t, "notifyd", "notifyd.8.md", flags, options)
		// Each flag but --version and --check has an environment twin, named
		// with it.
		for _, f := range flags {
			twin := "NOTIFYD_" + strings.ToUpper(strings.ReplaceAll(f, "-", "_"))
			if f != "version" && f != "check" && !strings.Contains(options, "**"+twin+"**") {
				t.Errorf("notifyd.8.md does not name --%s's environment twin %s", f, twin)
			}
		}
	})

	t.Run("notify", func(t *testing.T) {
		page := readManSource(t, "notify.1.md")
		flags, help := helpOf(t, "notify")
		wantSameOptions(t, "notify", "notify.1.md", flags, manSection(t, page, "# OPTIONS"))
		var commands []string
		for _, m := range helpCommand.FindAllStringSubmatch(help, -1) {
			if !slices.Contains(commands, m[1]) {
				commands = append(commands, m[1])
			}
		}
		if len(commands) < 3 {
			t.Fatalf("notify --help names the commands %v, want check, status and wait at least:\n%s", commands, help)
		}
		synopsis := manSection(t, page, "# SYNOPSIS")
		for _, c := range commands {
			flags, _ := helpOf(t, "notify", c)
			wantSameOptions(t, "notify "+c, "notify.1.md", flags, manSection(t, page, "## notify "+c))
			if !strings.Contains(synopsis, "**notify "+c+"**") {
				t.Errorf("notify.1.md's SYNOPSIS has no notify %s", c)
			}
		}
	})
}
