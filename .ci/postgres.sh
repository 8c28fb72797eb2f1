# Start a throw-away PostgreSQL server on 127.0.0.1 for the search storage tests.
#
#   source .ci/postgres.sh      # exports L2BG_TEST_POSTGRES_URL (and prints it)
#   l2bg_postgres_stop          # optional: stop it and remove its data directory
#
# Installs the Debian package when no server binaries are present (apt-get update + install, as
# root), then runs initdb + pg_ctl as the `postgres` user in a fresh temporary directory, on a free
# port, with trust authentication on loopback only. Nothing of the system cluster is touched.
# Meant to be sourced from bash (.ci/run); safe under `set -euo pipefail`.

l2bg_postgres_start() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "postgres.sh: installing postgresql (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    local user=postgres
    id -u "$user" >/dev/null 2>&1 || { echo "postgres.sh: no '$user' user" >&2; return 1; }
    local run_as=()
    if [ "$(id -u)" -eq 0 ]; then
        run_as=(runuser -u "$user" --)
    elif [ "$(id -un)" != "$user" ]; then
        user=$(id -un)  # not root: run the server as ourselves
    fi
    local dir port
    dir=$(mktemp -d /tmp/l2bg-pg.XXXXXX)
    chown "$user" "$dir" 2>/dev/null || true
    chmod 700 "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >&2 \
        || { cat "$dir/server.log" >&2; return 1; }
    "${run_as[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres l2bg_test
    export L2BG_PG_BIN="$bin" L2BG_PG_DIR="$dir"
    export L2BG_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/l2bg_test"
    echo "L2BG_TEST_POSTGRES_URL=$L2BG_TEST_POSTGRES_URL"
}

l2bg_postgres_stop() {
    [ -n "${L2BG_PG_DIR:-}" ] || return 0
    local run_as=()
    [ "$(id -u)" -eq 0 ] && run_as=(runuser -u postgres --)
    "${run_as[@]}" "$L2BG_PG_BIN/pg_ctl" -D "$L2BG_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$L2BG_PG_DIR"
    unset L2BG_PG_DIR L2BG_TEST_POSTGRES_URL
}

l2bg_postgres_start
