package benchkit

import (
	"context"
	"errors"
	"flag"
	"io"
	"testing"
	"time"
)

func TestShellWords(t *testing.T) {
	cases := []struct {
		name  string
		words []string
		want  string
	}{
		{"plain", []string{"wrk", "-t1", "-c8", "http://127.0.0.1:8001/"}, "wrk -t1 -c8 http://127.0.0.1:8001/"},
		{"space", []string{"wrk", "-H", "Connection: close"}, "wrk -H 'Connection: close'"},
		{"empty", []string{"go", "run", ".", "-csv", ""}, "go run . -csv ''"},
		{"special", []string{"-run", "^$", "-bench", "Summary|Register"}, "-run '^$' -bench 'Summary|Register'"},
		{"single quote alone", []string{"it's"}, `it\'s`},
		{"single quote with space", []string{"it's here"}, `'it'\''s here'`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ShellWords(c.words); got != c.want {
				t.Errorf("ShellWords(%q) = %s, want %s", c.words, got, c.want)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string // the error; "" for none
	}{
		{"flags only", []string{"-n", "3"}, ""},
		{"none", nil, ""},
		{"argument", []string{"-n", "3", "extra"}, `unexpected argument "extra": bench takes only flags`},
		{"unknown flag", []string{"-m", "3"}, "flag provided but not defined: -m"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := flag.NewFlagSet("bench", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Int("n", 1, "a number")
			got := ""
			if err := ParseFlags(fs, c.args); err != nil {
				got = err.Error()
			}
			if got != c.want {
				t.Errorf("ParseFlags(%q) error = %q, want %q", c.args, got, c.want)
			}
		})
	}
}

func TestCheckRange(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want string // "" for none
	}{
		{"int inside", CheckRange("trials", 1, 1, 10), ""},
		{"int above", CheckRange("trials", 11, 1, 10), "-trials 11: must be between 1 and 10"},
		{"duration inside", CheckRange("idle", time.Hour, time.Second, time.Hour), ""},
		{"duration below", CheckRange("idle", 500*time.Millisecond, time.Second, time.Hour), "-idle 500ms: must be between 1s and 1h0m0s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ""
			if c.err != nil {
				got = c.err.Error()
			}
			if got != c.want {
				t.Errorf("error = %q, want %q", got, c.want)
			}
		})
	}
}

func TestStepError(t *testing.T) {
	cause := errors.New("connection refused")
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		want string
		is   bool // whether the cause is kept for errors.Is
	}{
		{"failed", live, "throughput: connection refused", true},
		{"interrupted", ended, "throughput: interrupted", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := StepError(c.ctx, "throughput", cause)
			if err.Error() != c.want {
				t.Errorf("StepError = %q, want %q", err, c.want)
			}
			if errors.Is(err, cause) != c.is {
				t.Errorf("errors.Is(StepError, cause) = %t, want %t", !c.is, c.is)
			}
		})
	}
}
