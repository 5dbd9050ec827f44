#!/usr/bin/env bash
# Catch-up over more partitions and pipelines, against the raw limit of the
# same shape, in one run.
#
#   bench/scale.sh                          # 12 partitions, 1 pipeline
#   SLUICE_BENCH_PIPELINES=2 bench/scale.sh # 2 pipelines (2 topics, 2 tables)
#   SLUICE_BENCH_PARTITIONS=3 SLUICE_BENCH_EVENTS=500000 bench/scale.sh
#
# Each pipeline reads its own topic of N events (SLUICE_BENCH_EVENTS, default
# 500,000) with P partitions (SLUICE_BENCH_PARTITIONS, default 12) into its
# own orders table; one sluice process (release build) runs them all.
# Throughput is all rows over the time from the first row landing in any
# table to the last; the raw limit is as many concurrent psql \copy's of the
# same rows into identical tables, timed from the first start to the last
# end. Also prints sluice's CPU per row (all the process used, start-up
# included, over the rows) and its peak RSS against the documented bound.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=${SLUICE_BENCH_EVENTS:-500000}
partitions=${SLUICE_BENCH_PARTITIONS:-12}
pipelines=${SLUICE_BENCH_PIPELINES:-1}
unset SLUICE_BENCH_EVENTS SLUICE_BENCH_PARTITIONS SLUICE_BENCH_PIPELINES
# shellcheck source=bench/common.sh
source bench/common.sh

# One config with a [[pipelines]] block per pipeline.
{
    sluice_config "scale-$run_id" "scale_${run_id}_1" "scale_${run_id}_1" "127.0.0.1:9474" p1 "$orders_columns"
    for i in $(seq 2 "$pipelines"); do
        cat <<TOML
[[pipelines]]
name = "p$i"
topics = ["scale_${run_id}_$i"]
table = "scale_${run_id}_$i"
[pipelines.columns]
$orders_columns
TOML
    done
} >"$work/scale.toml"
tables=()
for i in $(seq 1 "$pipelines"); do
    sql "$(orders_ddl "scale_${run_id}_$i")"
    tables+=("scale_${run_id}_$i")
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "scale_${run_id}_$i" --partitions "$partitions" --count "$events" >&2
done
total=$((events * pipelines))
rows() {
    local q="select 0" t
    for t in "${tables[@]}"; do q="$q + (select count(*) from $t)"; done
    sql "$q"
}

"$sluice" run --config "$work/scale.toml" 2>"$work/scale.log" &
pid=$!
while [ "$(rows)" = 0 ]; do sleep 0.05; done
t0=$(date +%s.%N)
while [ "$(rows)" -lt "$total" ]; do sleep 0.2; done
t1=$(date +%s.%N)
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
kill -TERM $pid
wait $pid || true
rate=$(echo "$total / ($t1 - $t0)" | bc -l)
cpu_us=$(echo "1000000 * $ticks / $(getconf CLK_TCK) / $total" | bc -l)
# The documented bound (README "Memory") at the defaults, one broker:
# 64 MiB + per pipeline (max_buffer_bytes 64 + 2 writers × (5 × batch_bytes 8
# + 3 × 1 MiB records) + 42 × batch_size 10,000 for the primary key ≈ 151 MiB)
# + 2 × prefetch_bytes 16.
bound_mib=$((64 + pipelines * 151 + 32))

# Raw limit: the same rows, one concurrent \copy per table.
for t in "${tables[@]}"; do
    sql "copy (select order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts from $t) to stdout" >"$work/$t.tsv"
    sql "$(orders_ddl "raw_$t")"
done
r0=$(date +%s.%N)
copies=()
for t in "${tables[@]}"; do
    psql "$db_url" -Xq -v ON_ERROR_STOP=1 \
        -c "\\copy raw_$t (order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts) from '$work/$t.tsv'" &
    copies+=($!)
done
for c in "${copies[@]}"; do wait "$c"; done # each one's status: set -e stops on a failed copy
r1=$(date +%s.%N)
raw=$(echo "$total / ($r1 - $r0)" | bc -l)
for t in "${tables[@]}"; do sql "drop table $t; drop table raw_$t"; done

cat <<OUT
| $pipelines pipeline(s), $partitions partitions each, $events events each | raw \`\\copy\` ($pipelines concurrent) $(printf '%.0f' "$raw") rows/s; sluice $(printf '%.0f' "$rate") rows/s = **$(echo "$rate / $raw" | bc -l | xargs printf '%.2f') × raw**; $(printf '%.2f' "$cpu_us") µs CPU per row; peak RSS $((peak_kb / 1024)) MiB (bound $bound_mib MiB) |
OUT
