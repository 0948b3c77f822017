package httpapi

import (
	"net/http"
	"strconv"

	"github.com/notifyd/notifyd/registry"
)

// Source is where the health answer gets its numbers: the registry.
type Source interface {
	Summary() registry.Summary
}

// Header values shared by every answer; net/http only reads them.
var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noStore   = []string{"no-store"}
)

// Health answers the health check on every method and path.
type Health struct {
	src      Source
	required int
}

// NewHealth returns the health handler: 200 when src has at least required
// ready workers, else 500.
func NewHealth(src Source, required int) *Health {
	return &Health{src: src, required: required}
}

func (h *Health) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	ready := h.src.Summary().Ready
	var buf [32]byte
	body := strconv.AppendInt(buf[:0], int64(ready), 10)
	body = append(body, " workers ready\n"...)
	hdr := w.Header()
	hdr["Content-Type"] = textPlain
	hdr["Cache-Control"] = noStore
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	code := http.StatusOK
	if ready < h.required {
		code = http.StatusInternalServerError
	}
	w.WriteHeader(code)
	w.Write(body)
}
