package footprint

import (
	"runtime/debug"
	"testing"
)

func TestSet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	cases := []struct {
		name, env string
		want      int
	}{
		{"default", "", GCPercent},
		{"the environment wins", "200", 77}, // the runtime applied GOGC itself; Set leaves it
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("GOGC", c.env)
			debug.SetGCPercent(77)
			Set()
			if got := debug.SetGCPercent(100); got != c.want {
				t.Errorf("GOGC after Set = %d, want %d", got, c.want)
			}
		})
	}
}
