#!/usr/bin/env bash
# The test command (README "Quick start"): installs what the tests need, checks the services, runs pytest.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth, database `test`; override with MAILY_TEST_PG_URL),
# redis-server (tests start their own) and Node.js 20+ with npm. Missing services are installed/started
# when we can (root + apt), otherwise the script stops with a clear message: it never lets the suite skip them silently.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[test.sh]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[test.sh] %s\033[0m\n' "$*" >&2; exit 1; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_install() { say "installing $*"; apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
port_open() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', $1)))"; }

PY=${PYTHON:-python3}
say "installing the project and its test dependencies"
$PY -m pip install -q -e '.[test]' 2>&1 | grep -v -e "Running pip as the 'root' user" -e "^$" || true

# PostgreSQL: the storage suite runs on SQLite and PostgreSQL alike.
if [ -z "${MAILY_TEST_PG_URL:-}" ] && ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null && can_apt; then apt_install postgresql; fi
  if command -v pg_ctlcluster >/dev/null; then
    say "starting PostgreSQL"
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 50); do port_open 5432 && break; sleep 0.2; done
    su postgres -c "psql -tc \"SELECT 1 FROM pg_database WHERE datname='test'\" | grep -q 1 || createdb test" || true
  fi
  port_open 5432 || die "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started: install it, or set MAILY_TEST_PG_URL"
fi

# redis-server: the multi-node tests start private ones on free ports (never the one on 6379).
if ! command -v redis-server >/dev/null; then
  if can_apt; then apt_install redis-server; fi
  command -v redis-server >/dev/null || die "redis-server is needed for the multi-node tests (apt-get install redis-server)"
fi

# Node.js runs the npm y-websocket client and the seed's TypeScript client in the interop tests.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if can_apt; then apt_install nodejs npm; fi
  command -v node >/dev/null || die "Node.js 20+ and npm are needed for the interop tests"
fi

say "running the test suite"
set +e
$PY -m pytest "$@"
status=$?
set -e
[ $status -eq 5 ] && die "pytest collected no tests"
exit $status
