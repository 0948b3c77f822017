package addrfile

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWriteRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "address.json")
	want := Addresses{HTTP: "127.0.0.1:8001", Socket: "@notifyd"}
	if _, err := Write(path, want); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != `{"http":"127.0.0.1:8001","socket":"@notifyd"}`+"\n" {
		t.Fatalf("file holds %q, %v", b, err)
	}
	if got, err := Read(path); err != nil || got != want {
		t.Fatalf("Read = %+v, %v, want %+v", got, err, want)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want the file alone", len(entries))
	}
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(filepath.Join(dir, "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read of a missing file = %v, want fs.ErrNotExist", err)
	}
	other := filepath.Join(dir, "other")
	os.WriteFile(other, []byte(`{"port":1}`), 0o644)
	if _, err := Read(other); err == nil || !strings.Contains(err.Error(), "not notifyd's addresses") {
		t.Errorf("Read of another file = %v, want it refused", err)
	}
}

func TestAwaitExited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "address.json")
	cmd := exec.Command("true")
	if err := Start(cmd, path); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Args; len(got) != 3 || got[1] != "--address-file" || got[2] != path {
		t.Fatalf("Start ran %q, want the flag added", got)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if _, err := Await(path, done, time.Minute); err == nil || err.Error() != "notifyd exited at start" {
		t.Fatalf("Await = %v, want the exit reported", err)
	}
}
