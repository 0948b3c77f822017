package httpapi_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/notifyd/notifyd/httpapi"
	"github.com/notifyd/notifyd/protocol"
	"github.com/notifyd/notifyd/registry"
)

// TestStartAndReloadAnswers follows an instance that needs 2 workers from
// its start through a reload, in every answer.
func TestStartAndReloadAnswers(t *testing.T) {
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Filename: ".gunicorn.worker.{}",
		Detection: registry.Pidfd, Required: 2, Expected: 2, ReloadGrace: time.Hour, MainPID: sleeper(t).Process.Pid})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; reg.Close() })
	url := serve(t, httpapi.Config{Registry: reg, Required: 2})
	agent := httpapi.NewAgent(nil, httpapi.AgentConfig{Source: reg, Required: 2})

	wantAnswer(t, do(t, "GET", url+"/"), 500, "0 workers ready, starting\n")
	wantAnswer(t, do(t, "GET", url+"/?verbose"), 500,
		"[-]workers failed: 0/2 ready, starting\n[-]capacity failed: 0/2 expected (does not affect the status)\n[+]activity ok: 0/0 workers busy, 0 requests in flight\nhealthz check failed\n")
	doc := getStatus(t, url)
	wantField(t, doc, "starting", true)
	wantField(t, doc, "reload", nil)

	old := readyWorkers(t, reg, 2)
	wantAnswer(t, do(t, "GET", url+"/"), 200, "2 workers ready\n")
	if got := agent.Reply(); got != "ready up 100%\n" {
		t.Fatalf("agent = %q before the reload, want ready up 100%%", got)
	}

	reg.Reload(0)
	for _, c := range old {
		send(t, reg, protocol.Message{Lifecycle: protocol.Stopping, PID: c.Process.Pid})
	}
	wantAnswer(t, do(t, "GET", url+"/"), 200, "2 workers ready, reloading\n")
	if got := agent.Reply(); got != "drain\n" {
		t.Fatalf("agent = %q while reloading, want drain", got)
	}
	verbose := do(t, "GET", url+"/?verbose")
	if want := "[+]workers ok: 2/2 ready, reloading: 0/2 of the new generation ready, 2 kept for at most "; verbose.code != 200 || !strings.HasPrefix(verbose.body, want) {
		t.Fatalf("?verbose = %d %q, want 200 starting with %q", verbose.code, verbose.body, want)
	}
	doc = getStatus(t, url)
	wantField(t, doc, "ready", num(0))
	wantField(t, doc, "healthy", true)
	wantField(t, doc, "reloading", true)
	reload, _ := doc["reload"].(map[string]any)
	if reload == nil || reload["kept"] != num(2) || reload["fresh"] != num(0) {
		t.Fatalf("/status reload = %v, want kept 2, fresh 0", doc["reload"])
	}
	fams := scrape(t, url)
	wantSample(t, fams, gauge, 1, "notifyd_reloading")
	wantSample(t, fams, gauge, 1, "notifyd_healthy")
	wantSample(t, fams, gauge, 0, "notifyd_starting")

	readyWorkers(t, reg, 2)
	wantAnswer(t, do(t, "GET", url+"/"), 200, "2 workers ready\n")
	wantField(t, getStatus(t, url), "reloading", false)
	if got := agent.Reply(); got != "ready up 100%\n" {
		t.Fatalf("agent = %q after the reload, want ready up 100%%", got)
	}
}
