#!/usr/bin/env bash
# Runs every notifyd test. On a fresh Debian machine, run as root, it first
# installs the tools the tests use: gunicorn, uvicorn, Celery with
# redis-server, curl, systemd (for
# systemd-notify, systemd-socket-activate and systemd-analyze), haproxy,
# prometheus (for promtool), strace, git, the wheel's Python build tools, and what
# the release tests use (binutils, twine, qemu-user, python3-debian). Under
# CI=true a tool that is still missing fails the run.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
command -v gunicorn >/dev/null || missing+=(gunicorn)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-notify >/dev/null || missing+=(systemd)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v ss >/dev/null || missing+=(iproute2)
command -v promtool >/dev/null || missing+=(prometheus)
# Shows that the request hooks make no system call.
command -v strace >/dev/null || missing+=(strace)
# The worker classes the self-healing tests run, and the ASGI server and
# Celery the notifyd package's tests run, on Debian's interpreter.
for mod in gevent eventlet uvicorn celery redis; do
	/usr/bin/python3 -c "import $mod" 2>/dev/null || missing+=("python3-$mod")
done
command -v redis-server >/dev/null || missing+=(redis-server)
command -v git >/dev/null || missing+=(git)
# The wheel's build front end, backend and the venv it is installed into.
/usr/bin/python3 -c 'import build, setuptools, wheel, ensurepip' 2>/dev/null ||
	missing+=(python3-build python3-setuptools python3-wheel python3-venv)
command -v go-md2man >/dev/null || missing+=(go-md2man)
# The release tests: static binaries (readelf), wheels PyPI takes (twine),
# the aarch64 binaries run under emulation (qemu-aarch64), the copyright
# file parsed as Debian parses it (python3-debian).
command -v readelf >/dev/null || missing+=(binutils)
command -v twine >/dev/null || missing+=(twine)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
/usr/bin/python3 -c 'import debian.copyright' 2>/dev/null || missing+=(python3-debian)
command -v man >/dev/null || missing+=(man-db)
if ((${#missing[@]})); then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "test.sh: installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	else
		echo "test.sh: missing ${missing[*]}; on Debian: apt-get install ${missing[*]}" >&2
		[ "${CI:-}" = true ] && exit 1
	fi
fi

unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
	echo "test.sh: not gofmt-formatted: $unformatted" >&2
	exit 1
fi
go vet ./...
# go.mod and go.sum say exactly what the code imports.
go mod tidy -diff
# The chart is a module of its own, so that its plotting library stays out of
# notifyd's dependencies; it is vetted here so that bench/run keeps building.
(cd bench/chart && go vet ./...)
go test -race -count=1 ./...

# The hook module's own tests run on the interpreter gunicorn runs on.
python=$(sed -n '1s/^#! *//p' "$(command -v gunicorn)")
"${python:-python3}" -m unittest discover -s tests/python
# The wheel, built from a clean clone, in a fresh venv, in managed mode.
"${python:-python3}" -m unittest discover -s tests/wheel

# Every release artifact, for both architectures, built twice and checked:
# reproducible, static, licensed, and run under qemu for aarch64.
/usr/bin/python3 -m unittest discover -s tests/release
deploy/prometheus/test-rules
packaging/test-deb

go test -run '^$' -fuzz '^FuzzParse$' -fuzztime 30s ./protocol
