package backlog

import (
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	long := "unix:/" + strings.Repeat("a", 106)
	tooLong := "unix:/" + strings.Repeat("a", 107)
	tests := []struct {
		name, in, want, err string
	}{
		{name: "ipv4", in: "127.0.0.1:8000", want: "127.0.0.1:8000"},
		{name: "ipv4 wildcard", in: "0.0.0.0:8000", want: "0.0.0.0:8000"},
		{name: "ipv6", in: "[::1]:8000", want: "[::1]:8000"},
		{name: "ipv6 wildcard", in: "[::]:8000", want: "[::]:8000"},
		{name: "ipv6 made canonical", in: "[0:0:0:0:0:0:0:1]:8000", want: "[::1]:8000"},
		{name: "ipv6 upper case", in: "[FD00::2]:8000", want: "[fd00::2]:8000"},
		{name: "ipv4-mapped ipv6", in: "[::ffff:127.0.0.1]:8000", want: "[::ffff:127.0.0.1]:8000"},
		{name: "leading zero port", in: "127.0.0.1:08000", want: "127.0.0.1:8000"},
		{name: "highest port", in: "127.0.0.1:65535", want: "127.0.0.1:65535"},
		{name: "unix", in: "unix:/run/app.sock", want: "unix:/run/app.sock"},
		{name: "unix made clean", in: "unix:/run//app/../app.sock", want: "unix:/run/app.sock"},
		{name: "unix 107 bytes", in: long, want: long},

		{name: "empty", in: "", err: `listen address "": want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path`},
		{name: "no port", in: "127.0.0.1", err: `listen address "127.0.0.1": want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path`},
		{name: "bare path", in: "/run/app.sock", err: `listen address "/run/app.sock": want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path`},
		{name: "url", in: "http://127.0.0.1:8000", err: `listen address "http://127.0.0.1:8000": want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path`},
		{name: "ipv6 without brackets", in: "::1:8000", err: `listen address "::1:8000": want IP:port (127.0.0.1:8000, [::1]:8000, 0.0.0.0:8000) or unix:/absolute/path`},
		{name: "ipv4 in brackets", in: "[127.0.0.1]:8000", err: `listen address "[127.0.0.1]:8000": want IP:port, with an IPv6 address in brackets ([::1]:8000)`},
		{name: "host name", in: "localhost:8000", err: `listen address "localhost:8000": the host must be an IP address, not a name`},
		{name: "empty host", in: ":8000", err: `listen address ":8000": the host must be an IP address; use 0.0.0.0 or [::] for every address`},
		{name: "port zero", in: "127.0.0.1:0", err: `listen address "127.0.0.1:0": the port must be from 1 to 65535`},
		{name: "port too large", in: "127.0.0.1:65536", err: `listen address "127.0.0.1:65536": the port must be from 1 to 65535`},
		{name: "port name", in: "127.0.0.1:http", err: `listen address "127.0.0.1:http": the port must be from 1 to 65535`},
		{name: "empty port", in: "127.0.0.1:", err: `listen address "127.0.0.1:": the port must be from 1 to 65535`},
		{name: "zone", in: "[fe80::1%eth0]:8000", err: `listen address "[fe80::1%eth0]:8000": an IPv6 address with a zone is not supported`},
		{name: "unix relative", in: "unix:run/app.sock", err: `listen address "unix:run/app.sock": the path after unix: must be absolute, as in unix:/run/app.sock`},
		{name: "unix empty", in: "unix:", err: `listen address "unix:": the path after unix: must be absolute, as in unix:/run/app.sock`},
		{name: "unix abstract", in: "unix:@app", err: `listen address "unix:@app": the path after unix: must be absolute, as in unix:/run/app.sock`},
		{name: "unix too long", in: tooLong, err: `listen address "` + tooLong + `": a Unix socket path must be at most 107 bytes long`},
		{name: "unix NUL", in: "unix:/run/a\x00b", err: `listen address "unix:/run/a\x00b": a Unix socket path must not contain a NUL byte`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseAddr(tt.in)
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("ParseAddr(%q) error = %v, want %s", tt.in, err, tt.err)
				}
				if a != (Addr{}) {
					t.Errorf("ParseAddr(%q) = %#v with an error, want the zero Addr", tt.in, a)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseAddr(%q): %v", tt.in, err)
			}
			if got := a.String(); got != tt.want {
				t.Errorf("ParseAddr(%q).String() = %q, want %q", tt.in, got, tt.want)
			}
			// The canonical form parses back to the same Addr.
			b, err := ParseAddr(a.String())
			if err != nil || b != a {
				t.Errorf("ParseAddr(%q) = %#v, %v, want %#v", a.String(), b, err, a)
			}
		})
	}
}
