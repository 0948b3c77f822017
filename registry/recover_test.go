//go:build linux

package registry

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/notifyd/notifyd/protocol"
)

// recovered is what the state directory and the registry must hold after
// New has recovered a directory.
type recovered struct {
	summary Summary
	pids    []int
	// files maps every name left in the directory to its exact content.
	files map[string]string
}

func TestRecover(t *testing.T) {
	const readyAt = "2026-01-02T03:04:05Z"
	tests := []struct {
		name    string
		pattern string
		// setup writes the files into dir and returns what must be left.
		setup func(t *testing.T, dir string) recovered
	}{
		{
			name: "live process with its start time is adopted",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				content := "PID=" + strconv.Itoa(c.pid()) + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, c.pid()), 10) +
					"\nREADY_AT=" + readyAt + "\nSTATUS=load=0.5 (serving)\n"
				writeFile(t, filepath.Join(dir, stateName(c.pid())), content)
				return recovered{
					summary: Summary{Ready: 1, Workers: 1},
					pids:    []int{c.pid()},
					files:   map[string]string{stateName(c.pid()): content},
				}
			},
		},
		{
			name: "heartbeat deadline comes back",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				content := "PID=" + strconv.Itoa(c.pid()) + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, c.pid()), 10) +
					"\nREADY_AT=" + readyAt + "\nWATCHDOG_USEC=3600000000\n"
				writeFile(t, filepath.Join(dir, stateName(c.pid())), content)
				return recovered{
					summary: Summary{Ready: 1, Workers: 1},
					pids:    []int{c.pid()},
					files:   map[string]string{stateName(c.pid()): content},
				}
			},
		},
		{
			name: "live process with another start time is dropped",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "PID="+strconv.Itoa(c.pid())+
					"\nSTARTTIME="+strconv.FormatUint(startTimeOf(t, c.pid())+1, 10)+"\nREADY_AT="+readyAt+"\n")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "reaped process is dropped",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				start := startTimeOf(t, c.pid())
				c.killAndReap(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "PID="+strconv.Itoa(c.pid())+
					"\nSTARTTIME="+strconv.FormatUint(start, 10)+"\nREADY_AT="+readyAt+"\n")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "zombie is dropped",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				start := startTimeOf(t, c.pid())
				c.kill(t)
				waitZombie(t, c.pid())
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "PID="+strconv.Itoa(c.pid())+
					"\nSTARTTIME="+strconv.FormatUint(start, 10)+"\nREADY_AT="+readyAt+"\n")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "pid that never existed is dropped",
			setup: func(t *testing.T, dir string) recovered {
				writeFile(t, filepath.Join(dir, stateName(protocol.MaxPID)), "")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "empty seed file is adopted and rewritten",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "")
				return recovered{
					summary: Summary{Ready: 1, Workers: 1},
					pids:    []int{c.pid()},
					// The content is checked against the adopted worker.
					files: map[string]string{stateName(c.pid()): ""},
				}
			},
		},
		{
			name: "file with PID only is adopted and rewritten",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "PID="+strconv.Itoa(c.pid())+"\n")
				return recovered{
					summary: Summary{Ready: 1, Workers: 1},
					pids:    []int{c.pid()},
					files:   map[string]string{stateName(c.pid()): ""},
				}
			},
		},
		{
			name: "file naming another pid is dropped",
			setup: func(t *testing.T, dir string) recovered {
				c, other := startSleep(t), startSleep(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "PID="+strconv.Itoa(other.pid())+
					"\nSTARTTIME="+strconv.FormatUint(startTimeOf(t, other.pid()), 10)+"\n")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "unreadable content is dropped",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				writeFile(t, filepath.Join(dir, stateName(c.pid())), "this is not a state file\n")
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "symlink is removed, its target untouched",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				target := filepath.Join(t.TempDir(), "target")
				content := "PID=" + strconv.Itoa(c.pid()) + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, c.pid()), 10) + "\n"
				writeFile(t, target, content)
				if err := os.Symlink(target, filepath.Join(dir, stateName(c.pid()))); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if got := readFile(t, target); got != content {
						t.Errorf("symlink target changed to %q, want %q", got, content)
					}
				})
				return recovered{files: map[string]string{}}
			},
		},
		{
			name: "files that do not match the pattern are untouched",
			setup: func(t *testing.T, dir string) recovered {
				c := startSleep(t)
				p := strconv.Itoa(c.pid())
				files := map[string]string{}
				for _, name := range []string{
					"other.txt",
					"other.txt.tmp",
					".gunicorn.worker.abc",
					".gunicorn.worker.0123",
					".gunicorn.worker.0",
					".gunicorn.worker.",
					".gunicorn.worker.-" + p,
					".gunicorn.worker.+" + p,
					".gunicorn.worker. " + p,
					".gunicorn.worker." + p + "a",
					".gunicorn.worker." + p + ".bak",
					".gunicorn.worker.0" + p,
					"gunicorn.worker." + p,
					"x.gunicorn.worker." + p,
				} {
					content := "keep " + name + "\n"
					writeFile(t, filepath.Join(dir, name), content)
					files[name] = content
				}
				return recovered{files: files}
			},
		},
		{
			name: "leftover temporary files are removed",
			setup: func(t *testing.T, dir string) recovered {
				live, dead := startSleep(t), startSleep(t)
				dead.killAndReap(t)
				content := "PID=" + strconv.Itoa(live.pid()) + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, live.pid()), 10) +
					"\nREADY_AT=" + readyAt + "\n"
				writeFile(t, filepath.Join(dir, stateName(live.pid())), content)
				writeFile(t, filepath.Join(dir, stateName(live.pid())+".tmp"), "PID="+strconv.Itoa(live.pid())+"\nSTART")
				writeFile(t, filepath.Join(dir, stateName(dead.pid())+".tmp"), "")
				return recovered{
					summary: Summary{Ready: 1, Workers: 1},
					pids:    []int{live.pid()},
					files:   map[string]string{stateName(live.pid()): content},
				}
			},
		},
		{
			name: "several files at once",
			setup: func(t *testing.T, dir string) recovered {
				a, b, wrong, dead := startSleep(t), startSleep(t), startSleep(t), startSleep(t)
				dead.killAndReap(t)
				contentA := "PID=" + strconv.Itoa(a.pid()) + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, a.pid()), 10) +
					"\nREADY_AT=" + readyAt + "\n"
				writeFile(t, filepath.Join(dir, stateName(a.pid())), contentA)
				writeFile(t, filepath.Join(dir, stateName(b.pid())), "")
				writeFile(t, filepath.Join(dir, stateName(wrong.pid())), "STARTTIME=1\n")
				writeFile(t, filepath.Join(dir, stateName(dead.pid())), "")
				writeFile(t, filepath.Join(dir, "README"), "state files\n")
				return recovered{
					summary: Summary{Ready: 2, Workers: 2},
					pids:    sortedInts(a.pid(), b.pid()),
					files: map[string]string{
						stateName(a.pid()): contentA,
						stateName(b.pid()): "",
						"README":           "state files\n",
					},
				}
			},
		},
		{
			name:    "custom pattern with a suffix",
			pattern: "w-{}.state",
			setup: func(t *testing.T, dir string) recovered {
				live, dead, seed := startSleep(t), startSleep(t), startSleep(t)
				dead.killAndReap(t)
				p := strconv.Itoa(live.pid())
				content := "PID=" + p + "\nSTARTTIME=" + strconv.FormatUint(startTimeOf(t, live.pid()), 10) +
					"\nREADY_AT=" + readyAt + "\nSTATUS=custom\n"
				writeFile(t, filepath.Join(dir, "w-"+p+".state"), content)
				writeFile(t, filepath.Join(dir, "w-"+p+".state.tmp"), "")
				writeFile(t, filepath.Join(dir, "w-"+strconv.Itoa(dead.pid())+".state"), "")
				writeFile(t, filepath.Join(dir, "w-"+strconv.Itoa(seed.pid())+".state"), "")
				untouched := map[string]string{
					stateName(live.pid()):         "",
					"w-" + p:                      "no suffix\n",
					"w-" + p + ".stat":            "short suffix\n",
					"w-" + p + ".state.bak":       "longer suffix\n",
					"x-" + p + ".state":           "other prefix\n",
					"w-" + p + "x.state":          "not digits\n",
					"w-0" + p + ".state":          "leading zero\n",
					"w-.state":                    "no pid\n",
					"w-" + p + ".state.tmp.other": "not a temporary file\n",
				}
				for name, content := range untouched {
					writeFile(t, filepath.Join(dir, name), content)
				}
				files := maps.Clone(untouched)
				files["w-"+p+".state"] = content
				files["w-"+strconv.Itoa(seed.pid())+".state"] = ""
				return recovered{
					summary: Summary{Ready: 2, Workers: 2},
					pids:    sortedInts(live.pid(), seed.pid()),
					files:   files,
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t)
			if tt.pattern != "" {
				cfg.Filename = tt.pattern
			}
			want := tt.setup(t, cfg.Dir)
			r := startRegistry(t, cfg)

			wantSummary(t, r, want.summary)
			workers := r.Workers()
			if got := pids(workers); !slices.Equal(got, want.pids) {
				t.Fatalf("registered pids %v, want %v", got, want.pids)
			}
			files := newStateFilesOrFail(t, cfg)
			for _, w := range workers {
				if w.State != Ready {
					t.Errorf("adopted worker %d is %v, want ready", w.PID, w.State)
				}
				if st := startTimeOf(t, w.PID); w.StartTime != st {
					t.Errorf("adopted worker %d has start time %d, want %d", w.PID, w.StartTime, st)
				}
				name := filepath.Base(files.path(w.PID))
				content, ok := want.files[name]
				if !ok {
					t.Fatalf("adopted worker %d has no file %s in the expectations", w.PID, name)
				}
				got := readFile(t, filepath.Join(cfg.Dir, name))
				if content != "" && got != content {
					t.Errorf("state file %s changed to\n%q\nwant it kept as\n%q", name, got, content)
				}
				if want := wantState(w); got != want {
					t.Errorf("state file %s holds\n%q\nwant\n%q", name, got, want)
				}
			}
			wantNames := slices.Sorted(maps.Keys(want.files))
			if got := savedNames(t, r); !slices.Equal(got, wantNames) {
				t.Fatalf("state directory holds %q, want %q", got, wantNames)
			}
			for name, content := range want.files {
				if slices.Contains(want.pids, pidOfName(files, name)) {
					continue // checked above against the worker
				}
				if got := readFile(t, filepath.Join(cfg.Dir, name)); got != content {
					t.Errorf("%s changed to %q, want %q", name, got, content)
				}
			}
			if got := r.Exits(); got != 0 {
				t.Errorf("Exits() = %d after recovery, want 0", got)
			}
			if got := r.StateFileErrors(); got != 0 {
				t.Errorf("StateFileErrors() = %d after recovery, want 0", got)
			}
		})
	}
}

func TestRecoveredWorkerFields(t *testing.T) {
	cfg := testConfig(t)
	c := startSleep(t)
	start := startTimeOf(t, c.pid())
	writeFile(t, statePath(cfg.Dir, c.pid()), "PID="+strconv.Itoa(c.pid())+"\nSTARTTIME="+strconv.FormatUint(start, 10)+
		"\nREADY_AT=2026-01-02T03:04:05.5Z\nSTATUS=serving\nWATCHDOG_USEC=3600000000\n")
	r := startRegistry(t, cfg)
	got := oneWorker(t, r)
	want := Worker{
		PID:          c.pid(),
		StartTime:    start,
		State:        Ready,
		ReadyAt:      time.Date(2026, 1, 2, 3, 4, 5, 5e8, time.UTC),
		Status:       "serving",
		WatchdogUSec: 3600000000,
	}
	if !got.ReadyAt.Equal(want.ReadyAt) {
		t.Fatalf("ReadyAt = %v, want %v", got.ReadyAt, want.ReadyAt)
	}
	got.ReadyAt = want.ReadyAt
	if got != want {
		t.Fatalf("adopted worker = %+v, want %+v", got, want)
	}
}

// TestRecoveredWorkerIsWatched checks that an adopted worker is watched like
// a registered one: its exit drops it and its file.
func TestRecoveredWorkerIsWatched(t *testing.T) {
	for _, detection := range []Detection{Pidfd, Sweep} {
		t.Run(detection.String(), func(t *testing.T) {
			cfg := testConfig(t)
			cfg.Detection = detection
			if detection == Sweep {
				cfg.ReapInterval = 50 * time.Millisecond
			}
			c := startSleep(t)
			writeFile(t, statePath(cfg.Dir, c.pid()), "")
			r := startRegistry(t, cfg)
			wantSummary(t, r, Summary{Ready: 1, Workers: 1})

			c.killAndReap(t)
			eventually(t, "the adopted worker's exit to be seen", func() bool { return r.Summary() == Summary{} })
			r.Sync()
			if got := savedNames(t, r); len(got) != 0 {
				t.Fatalf("state directory holds %q, want nothing", got)
			}
			if got := r.Exits(); got != 1 {
				t.Fatalf("Exits() = %d, want 1", got)
			}
		})
	}
}

func newStateFilesOrFail(t *testing.T, cfg Config) stateFiles {
	t.Helper()
	files, err := newStateFiles(cfg.Dir, cfg.Filename)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// pidOfName returns the pid a state file name stands for, or 0.
func pidOfName(files stateFiles, name string) int {
	pid, tmp, ok := files.match(name)
	if !ok || tmp {
		return 0
	}
	return pid
}

func sortedInts(v ...int) []int {
	slices.Sort(v)
	return v
}
