package main

import "testing"

func TestOptionBounds(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string // the error; "" for none
	}{
		{"defaults", nil, ""},
		{"quick", []string{"-duration", "5s", "-sleep", "2s", "-rounds", "1", "-round", "1s", "-warmup", "0s"}, ""},
		{"no more clients than workers", []string{"-sleepers", "2"}, "-sleepers 2: must be between 3 (more than the workers, so the queue fills) and 256"},
		{"round not whole seconds", []string{"-round", "1500ms"}, "-round 1.5s: must be whole seconds between 1s and 5m0s (wrk takes whole seconds)"},
		{"sleep past gunicorn's timeout", []string{"-sleep", "30s"}, "-sleep 30s: must be between 500ms and 25s"},
		{"argument", []string{"extra"}, `unexpected argument "extra": saturation takes only flags`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseOptions(c.args, testWriter{t})
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != c.want {
				t.Errorf("parseOptions(%q) error = %q, want %q", c.args, got, c.want)
			}
		})
	}
}

// testWriter sends the flag package's usage text to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
