# Sourced by tests/run (and usable alone: `. tests/pg.sh; pg_start`): a throwaway PostgreSQL cluster for
# the PostgreSQL catalog's tests, from the Debian binaries (initdb + pg_ctl in a temp dir, listening on a
# unix socket only), unless BLOCKSNAP_TEST_PG already names a server. Exports BLOCKSNAP_TEST_PG, a URL of
# a database whose user may create databases (each test makes its own); `pg_stop` stops the cluster and
# removes its directory.
# initdb refuses to run as root: as root the cluster runs as the `postgres` user (made by the package).

pg_start() {
  if [ -n "${BLOCKSNAP_TEST_PG:-}" ]; then
    return 0
  fi
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ ! -x "$bindir/initdb" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "tests/pg.sh: installing postgresql with apt-get" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    else
      echo "tests/pg.sh: PostgreSQL's server binaries are missing; install them (sudo apt-get install postgresql) or set BLOCKSNAP_TEST_PG" >&2
      return 1
    fi
  fi
  PG_TMP=$(mktemp -d /tmp/blocksnap-pg.XXXXXX)
  local as=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$PG_TMP"
    as=(runuser -u postgres --)
  fi
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${as[@]}" "$bindir/initdb" -D "$PG_TMP/data" -U blocksnap --auth=trust -E UTF8 --locale=C.UTF-8 >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; return 1; }
  # Unix socket only (in the cluster's own dir), fsync on as in production; crash recovery (the catalog's
  # crash test) syncs the data dir with one syncfs, not one fsync per file of every test database.
  "${as[@]}" "$bindir/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 \
    -o "-c listen_addresses= -k $PG_TMP -p $port -c max_connections=400 -c recovery_init_sync_method=syncfs" start >/dev/null \
    || { cat "$PG_TMP/server.log" >&2; return 1; }
  PG_BINDIR=$bindir
  export BLOCKSNAP_TEST_PG="postgresql:///postgres?host=$PG_TMP&port=$port&user=blocksnap"
}

pg_stop() {
  if [ -n "${PG_TMP:-}" ] && [ -d "$PG_TMP/data" ]; then
    local as=()
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}
