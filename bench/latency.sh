#!/usr/bin/env bash
# Light-load latency: the Kafka timestamp of each event → its row inserted.
#
#   bench/latency.sh                 # 1,000 events/s for 30 s, sluice's defaults
#   SLUICE_BENCH_RATE=500 SLUICE_BENCH_SECONDS=60 bench/latency.sh
#   SLUICE_BENCH_EXTRA='[kafka.properties]
#   "fetch.wait.max.ms" = "50"' bench/latency.sh   # TOML appended to the config
#   SLUICE_BENCH_PIPELINE='min_interval = "5ms"' bench/latency.sh
#                                    # more keys of the pipeline
#
# sluice (release build) joins the group first, then the events are produced
# at the rate (3 partitions, linger 5 ms). A row's insertion time is
# clock_timestamp() during its COPY, which precedes the COMMIT that makes it
# visible by the commit's own duration. Prints p50, p90, p99, p99.9 and max,
# beside the same percentiles of a bare consumer reading the same records
# at the same time (examples/floor.rs: the broker's and producer's share),
# the flush interval sluice settled on and its CPU while idle afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rate=${SLUICE_BENCH_RATE:-1000}
seconds=${SLUICE_BENCH_SECONDS:-30}
extra=${SLUICE_BENCH_EXTRA:-}
pipeline=${SLUICE_BENCH_PIPELINE:-}
unset SLUICE_BENCH_RATE SLUICE_BENCH_SECONDS SLUICE_BENCH_EXTRA SLUICE_BENCH_PIPELINE
# shellcheck source=bench/common.sh
source bench/common.sh

topic="bench_latency_$run_id"
table="latency_$run_id"
sql "$(orders_ddl "$table")"
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 3 --count 0 >&2
{
    sluice_config "bench-$run_id" "$topic" "$table" "127.0.0.1:9473" bench "$orders_columns" "$pipeline"
    printf '%s\n' "$extra"
} >"$work/latency.toml"
log="${TMPDIR:-/tmp}/sluice-latency-$run_id.log" # kept: the run's sluice log
"$sluice" run --config "$work/latency.toml" 2>"$log" &
pid=$!
count=$((rate * seconds))
# The floor: a bare consumer of the same records, with the fetch wait sluice uses (librdkafka's 500 ms)
# unless the extra config sets another.
fetch_wait=$(printf '%s\n' "$extra" | tr -d '\r' |
    sed -n 's/^[[:space:]]*"fetch.wait.max.ms"[[:space:]]*=[[:space:]]*"\([0-9][0-9]*\)".*/\1/p' | tail -1)
fetch_wait=${fetch_wait:-${SLUICE_KAFKA__PROPERTIES__FETCH_WAIT_MAX_MS:-500}}
"$floor" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --count "$count" \
    --fetch-wait-ms "$fetch_wait" >"$work/floor.out" 2>"$work/floor.err" &
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
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 3 --count "$count" --rate "$rate" >&2
until [ "$(sql "select count(*) from $table")" -ge "$count" ]; do sleep 0.1; done
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
             from (select extract(epoch from inserted_at - kafka_ts) * 1000 as ms from $table) t")
cat <<OUT
| light load ($rate events/s, $seconds s$(echo "${extra:+, $extra}${pipeline:+, $pipeline}" | tr '\n' ' ')): p50 / p90 / p99 / p99.9 / max | $stats |
| the floor: a bare librdkafka consumer of the same records (Kafka timestamp → polled), p50 / p90 / p99 / p99.9 / max | $(cat "$work/floor.out") |
| flush interval settled on; sluice CPU while idle | $interval; $(printf '%.1f' "$idle") % of a core |
OUT
