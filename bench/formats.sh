#!/usr/bin/env bash
# Avro catch-up against JSON catch-up and the raw COPY of the same rows, in
# one run.
#
#   bench/formats.sh        # 1,000,000 order events over 6 partitions;
#                           # SLUICE_BENCH_EVENTS, SLUICE_BENCH_PARTITIONS
#
# The same order events (bench/common.sh's table and mapping, the whole
# value as `doc`) are produced twice: as JSON, and as Avro in the Confluent
# wire format (decimal amounts, timestamp-millis; the schema registered in
# tests/support/registry.py, the registry-compatible server the tests use).
# Each topic is caught up by a fresh sluice (release build): rows/s first row
# to last and sluice's CPU per row. Then the rows sluice wrote are COPYed
# raw into the same table shape, timed: the physical limit. Prints a block
# for bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=${SLUICE_BENCH_EVENTS:-1000000}
partitions=${SLUICE_BENCH_PARTITIONS:-6}
unset SLUICE_BENCH_EVENTS SLUICE_BENCH_PARTITIONS
# shellcheck source=bench/common.sh
source bench/common.sh

# The registry, on a port of its own, for this run only (common.sh's exit
# trap stops it with the other jobs).
python3 tests/support/registry.py --port 0 --port-file "$work/registry.port" &
for _ in $(seq 100); do [ -s "$work/registry.port" ] && break; sleep 0.1; done
registry="http://127.0.0.1:$(cat "$work/registry.port")"

# catchup FORMAT: produce, then catch up; sets rate, cpu_us, peak_kb, table.
catchup() {
    local format=$1 topic="bench_fmt_${1}_$run_id"
    table="fmt_${1}_$run_id"
    sql "$(orders_ddl "$table")"
    local avro=() extra=""
    if [ "$format" = avro ]; then
        avro=(--avro-registry "$registry")
        extra='value_format = "avro"'
    fi
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions "$partitions" \
        --count "$events" "${avro[@]}" >&2
    {
        sluice_config "bench-$topic" "$topic" "$table" off "fmt_$format" "$orders_columns" "$extra"
        printf '[schema_registry]\nurl = "%s"\n' "$registry"
    } >"$work/$format.toml"
    "$sluice" run --config "$work/$format.toml" 2>"$work/$format.log" &
    local pid=$!
    while [ "$(sql "select count(*) from $table")" = 0 ]; do
        kill -0 $pid 2>/dev/null || { cat "$work/$format.log" >&2; exit 1; }
        sleep 0.05
    done
    local t0 t1 ticks
    t0=$(date +%s.%N)
    while [ "$(sql "select count(*) from $table")" -lt "$events" ]; do sleep 0.2; done
    t1=$(date +%s.%N)
    peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    cpu_us=$(echo "1000000 * $ticks / $(getconf CLK_TCK) / $events" | bc -l)
    kill -TERM $pid
    wait $pid || true
    rate=$(echo "$events / ($t1 - $t0)" | bc -l)
    local dead
    dead=$(sql "select count(*) from sluice.dead_letters where pipeline = 'fmt_$format' and topic = '$topic'")
    [ "$dead" = 0 ] || { echo "formats: $dead dead letters for $format" >&2; exit 1; }
}

catchup json
json_rate=$rate json_cpu=$cpu_us json_peak=$peak_kb json_table=$table
catchup avro
avro_rate=$rate avro_cpu=$cpu_us avro_peak=$peak_kb avro_table=$table

# Both tables hold the same shape of rows; the limit is a raw COPY of them.
sql "copy (select order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts from $avro_table) to stdout" >"$work/rows.tsv"
sql "$(orders_ddl "raw_$run_id")"
r0=$(date +%s.%N)
psql "$db_url" -Xq -v ON_ERROR_STOP=1 -c "\\copy raw_$run_id (order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts) from '$work/rows.tsv'"
r1=$(date +%s.%N)
raw=$(echo "$events / ($r1 - $r0)" | bc -l)
sql "drop table raw_$run_id"
sql "drop table $json_table"
sql "drop table $avro_table"

cat <<OUT
## $(date -u +%Y-%m-%d) — formats: $events order events, $partitions partitions, $(nproc) cores, PostgreSQL $(sql "show server_version" | cut -d' ' -f1), broker: $SLUICE_KAFKA_BROKERS

| run | rows/s (first row to last) | × raw COPY | sluice CPU per row | peak RSS |
| --- | --- | --- | --- | --- |
| raw \`\\copy\` of the same rows | $(printf '%.0f' "$raw") | 1.00 | — | — |
| JSON catch-up | $(printf '%.0f' "$json_rate") | $(echo "$json_rate / $raw" | bc -l | xargs printf '%.2f') | $(printf '%.2f' "$json_cpu") µs | $((json_peak / 1024)) MiB |
| Avro catch-up | $(printf '%.0f' "$avro_rate") | $(echo "$avro_rate / $raw" | bc -l | xargs printf '%.2f') | $(printf '%.2f' "$avro_cpu") µs | $((avro_peak / 1024)) MiB |
OUT
