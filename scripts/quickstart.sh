#!/usr/bin/env bash
# sluice quickstart: Kafka -> PostgreSQL on this machine, in one command.
#
#   scripts/quickstart.sh
#
# 1. makes sure Postgres and a local Kafka-compatible broker (tansu) run
#    (scripts/services.sh);
# 2. creates database sluice_demo and table public.orders if missing;
# 3. builds sluice and the `produce` example (release);
# 4. runs `sluice migrate`, then `sluice run` in the background, both with
#    config/example.toml;
# 5. produces 10,000 sample order events to topic "orders" and waits until all
#    of them are rows in public.orders, printing the count every second;
# 6. shows five rows and stops sluice with SIGTERM.
#
# Re-runnable: each run produces new ids, starting after max(order_id).
#
# Environment: SLUICE_QUICKSTART_COUNT (10000), SLUICE_QUICKSTART_TIMEOUT (120 s),
# CARGO_TARGET_DIR (/var/tmp/sluice-target), and those of scripts/services.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/services.sh
source scripts/services.sh

say() { printf 'sluice: %s\n' "$*" >&2; }
die() {
    printf 'sluice: error: %s\n' "$*" >&2
    exit 1
}

count=${SLUICE_QUICKSTART_COUNT:-10000}
timeout=${SLUICE_QUICKSTART_TIMEOUT:-120}
# sluice refuses unknown SLUICE_* variables; keep these knobs out of its environment.
unset SLUICE_QUICKSTART_COUNT SLUICE_QUICKSTART_TIMEOUT
config=config/example.toml
topic=orders
table=public.orders
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"

# The demo database lives on the same server as SLUICE_TEST_DATABASE_URL
# (by default postgres://postgres@127.0.0.1:5432/postgres -> .../sluice_demo).
admin_url=$SLUICE_TEST_DATABASE_URL
demo_url="${admin_url%%\?*}"
demo_url="${demo_url%/*}/sluice_demo"

[ -f "$config" ] || die "$config not found (run this from a sluice checkout)"

# --- database and table ---------------------------------------------------
if [ "$(psql "$admin_url" -XqtAc "select 1 from pg_database where datname = 'sluice_demo'")" != 1 ]; then
    say "creating database sluice_demo"
    psql "$admin_url" -Xq -v ON_ERROR_STOP=1 -c 'create database sluice_demo'
fi

sql() { psql "$demo_url" -XqtA -v ON_ERROR_STOP=1 -c "$1"; }

sql "set client_min_messages = warning;
     create table if not exists $table (
        order_id     bigint primary key,
        customer     text,
        amount       numeric(12,2),
        created_at   timestamptz,
        doc          jsonb,
        kafka_offset bigint
    )" >/dev/null

# --- build -------------------------------------------------------------------
say "building sluice and the produce example (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo build --release --bin sluice --example produce
sluice="$CARGO_TARGET_DIR/release/sluice"
produce="$CARGO_TARGET_DIR/release/examples/produce"

# Point the example config at the services found above.
export SLUICE_KAFKA__BROKERS="$SLUICE_KAFKA_BROKERS"
export SLUICE_POSTGRES__URL="$demo_url"

say "sluice migrate --config $config"
"$sluice" migrate --config "$config"

# Create the topic before sluice subscribes: a consumer subscribed to a topic
# that does not exist yet may only notice it at its next metadata refresh.
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 3 --count 0

# --- run sluice ----------------------------------------------------------------
log_dir=.cache/quickstart
mkdir -p "$log_dir"
log="$log_dir/sluice.log"
sluice_pid=""

# Stop sluice (SIGTERM, then SIGKILL after 30 s); sets sluice_rc.
stop_sluice() {
    sluice_rc=0
    [ -n "$sluice_pid" ] || return 0
    if kill -0 "$sluice_pid" 2>/dev/null; then
        kill -TERM "$sluice_pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$sluice_pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$sluice_pid" 2>/dev/null; then
            say "sluice did not stop within 30s of SIGTERM; killing it"
            kill -KILL "$sluice_pid" 2>/dev/null || true
        fi
    fi
    wait "$sluice_pid" 2>/dev/null || sluice_rc=$?
    sluice_pid=""
}

on_exit() {
    local rc=$?
    if [ -n "$sluice_pid" ]; then
        say "stopping sluice (pid $sluice_pid)"
        stop_sluice
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log_tail() {
    say "last lines of $log:"
    tail -n 40 "$log" >&2 || true
}

# New ids each run: after the largest id in the table and after every id an
# earlier (possibly failed) run produced, whose events may still be in the topic.
max_id=$(sql "select coalesce(max(order_id), 0) from $table")
start_id=$((max_id + 1))
next_id_file="$log_dir/next-id"
if [ -s "$next_id_file" ]; then
    next_id=$(<"$next_id_file")
    if [[ $next_id =~ ^[0-9]+$ ]] && [ "$next_id" -gt "$start_id" ]; then start_id=$next_id; fi
fi
end_id=$((start_id + count))
echo "$end_id" >"$next_id_file"

say "starting: sluice run --config $config (log: $log)"
"$sluice" run --config "$config" >"$log" 2>&1 &
sluice_pid=$!

say "producing $count events to topic $topic (ids $start_id..$((end_id - 1)))"
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 3 \
    --count "$count" --start-id "$start_id"

# --- wait for the rows ------------------------------------------------------------
started=$SECONDS
while :; do
    if ! kill -0 "$sluice_pid" 2>/dev/null; then
        rc=0
        wait "$sluice_pid" || rc=$?
        sluice_pid=""
        log_tail
        die "sluice exited unexpectedly (exit code $rc)"
    fi
    counts=$(sql "select count(*) filter (where order_id >= $start_id and order_id < $end_id), count(*) from $table")
    arrived=${counts%%|*}
    total=${counts##*|}
    say "$(printf '%3ds' $((SECONDS - started))): $arrived of $count rows arrived (orders: $total rows in total)"
    [ "$arrived" -lt "$count" ] || break
    if [ $((SECONDS - started)) -ge "$timeout" ]; then
        log_tail
        say "if sluice never got partitions: tansu can wedge a consumer group whose member left during its"
        say "first join (e.g. an earlier run interrupted in its first seconds); restart the broker with"
        say "  kill -INT \$(cat $SLUICE_TOOLS_DIR/tansu.pid) && scripts/services.sh   (it forgets all topics)"
        die "only $arrived of $count events arrived in $table within ${timeout}s; see $log"
    fi
    sleep 1
done

say "all $count events arrived in $((SECONDS - started))s; five of them:"
psql "$demo_url" -X -P pager=off -v ON_ERROR_STOP=1 -c "
    select order_id, customer, amount, created_at, kafka_offset,
           left(doc::text, 60) || '...' as doc
      from $table
     where order_id >= $start_id and order_id < $end_id
     order by order_id
     limit 5"

say "stopping sluice (SIGTERM)"
stop_sluice
if [ "$sluice_rc" -ne 0 ]; then
    log_tail
    die "sluice exited with code $sluice_rc after SIGTERM; see $log"
fi
say "sluice stopped cleanly. Explore: psql $demo_url -c 'select * from $table limit 10'"
say "run this script again to send $count more events; sluice's log is $log"
