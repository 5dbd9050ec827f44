#!/usr/bin/env bash
# sluice throughput and latency against the physical limit, in one run.
#
#   bench/run.sh            # 1,000,000 events over 6 partitions; SLUICE_BENCH_EVENTS
#                           # and SLUICE_BENCH_PARTITIONS to change
#   SLUICE_BENCH_BASELINE=/path/to/older/sluice bench/run.sh
#                           # also runs the catch-up with that binary, in the
#                           # same run, for a before/after comparison;
#                           # SLUICE_BENCH_ROUNDS=n (default 1) repeats both,
#                           # alternating which goes first, and reports each
#                           # round and the medians
#
# 1. raw limit: psql \copy of the very rows sluice wrote, into an identical
#    logged table (same columns, same primary key), timed in every round
#    right after its catch-ups (the machine's speed drifts); the ratio is
#    against the median, and each round's own ratio is printed too;
# 2. catch-up: N events produced first, then sluice (release build) started;
#    throughput from the first row landing to the last, and the batch size
#    adaptive flushing settled on (from /metrics);
# 3. light load: 500 events/s for 30 s with sluice running; latency from the
#    Kafka timestamp to the row's insertion (clock_timestamp() during COPY,
#    which precedes the commit that makes it visible by the commit's own
#    duration), p50 and p99.
#
# Prints a block to paste into bench/RESULTS.md. Set-up: bench/common.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=${SLUICE_BENCH_EVENTS:-1000000}
partitions=${SLUICE_BENCH_PARTITIONS:-6}
baseline=${SLUICE_BENCH_BASELINE:-}
rounds=${SLUICE_BENCH_ROUNDS:-1}
unset SLUICE_BENCH_EVENTS SLUICE_BENCH_PARTITIONS SLUICE_BENCH_BASELINE SLUICE_BENCH_ROUNDS
# shellcheck source=bench/common.sh
source bench/common.sh

config() { # topic table port
    sluice_config "bench-$run_id-$1" "$1" "$2" "127.0.0.1:$3" bench "$orders_columns"
}


# --- 2. catch-up ---------------------------------------------------------------
# catchup BINARY NAME: N events produced first, then BINARY started; sets
# rate (rows/s first row to last), cpu_us (sluice's user + system CPU per
# row), peak_kb and batch; leaves the table as $table.
catchup() {
    local bin=$1 name=$2
    topic="bench_${name}_$run_id"
    table="${name}_$run_id"
    sql "$(orders_ddl "$table")"
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions "$partitions" --count "$events" >&2
    config "$topic" "$table" 9471 >"$work/$name.toml"
    "$bin" run --config "$work/$name.toml" 2>"$work/$name.log" &
    local pid=$!
    while [ "$(sql "select count(*) from $table")" = 0 ]; do sleep 0.05; done
    local t0 t1 ticks
    t0=$(date +%s.%N)
    while [ "$(sql "select count(*) from $table")" -lt "$events" ]; do sleep 0.2; done
    t1=$(date +%s.%N)
    peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    cpu_us=$(echo "1000000 * $ticks / $(getconf CLK_TCK) / $events" | bc -l)
    batch=$(curl -s 127.0.0.1:9471/metrics | awk '/^sluice_batch_rows_sum/ {s=$2} /^sluice_batch_rows_count/ {c=$2} END {if (c) printf "%.0f", s/c}')
    kill -TERM $pid; wait $pid || true
    rate=$(echo "$events / ($t1 - $t0)" | bc -l)
}
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
# raw_copy TABLE: psql \copy of TABLE's rows (what sluice wrote) into an
# identical fresh table, timed; sets raw (rows/s).
raw_copy() {
    sql "copy (select order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts from $1) to stdout" >"$work/rows.tsv"
    local t="raw_$1" r0 r1
    sql "$(orders_ddl "$t")"
    r0=$(date +%s.%N)
    psql "$db_url" -Xq -v ON_ERROR_STOP=1 -c "\\copy $t (order_id, customer, amount, created_at, doc, kafka_offset, kafka_ts) from '$work/rows.tsv'"
    r1=$(date +%s.%N)
    sql "drop table $t"
    raw=$(echo "$events / ($r1 - $r0)" | bc -l)
}
base_rates="" base_cpus="" rates="" cpus="" raws="" rounds_text=""
for round in $(seq 1 "$rounds"); do
    # Alternate which binary goes first: the later one finds a fuller
    # broker and a busier database.
    if [ -n "$baseline" ] && [ $((round % 2)) = 1 ]; then
        catchup "$baseline" "baseline$round"
        base_rates="$base_rates $rate" base_cpus="$base_cpus $cpu_us" base_peak=$peak_kb
        first=baseline
        sql "drop table $table"
    fi
    catchup "$sluice" "catchup$round"
    rates="$rates $rate" cpus="$cpus $cpu_us" catchup_peak=$peak_kb catchup_batch=$batch catchup_table=$table
    if [ -n "$baseline" ] && [ $((round % 2)) = 0 ]; then
        catchup "$baseline" "baseline$round"
        base_rates="$base_rates $rate" base_cpus="$base_cpus $cpu_us" base_peak=$peak_kb
        first=this
        sql "drop table $table"
    fi
    # 1. The raw limit in every round, right after its catch-ups: the
    # machine's speed drifts between rounds.
    raw_copy "$catchup_table"
    raws="$raws $raw"
    sql "drop table $catchup_table"
    rounds_text="$rounds_text
| round $round${baseline:+ ($first first)}: raw COPY; this build${baseline:+ / baseline} | $(printf '%.0f' "$raw") rows/s; $(echo "$rates" | awk '{printf "%.0f", $NF}')${baseline:+ / $(echo "$base_rates" | awk '{printf "%.0f", $NF}')} rows/s ($(echo "$rates $raw" | awk '{printf "%.2f", $(NF-1) / $NF}')${baseline:+ / $(echo "$base_rates $raw" | awk '{printf "%.2f", $(NF-1) / $NF}')} × raw); $(echo "$cpus" | awk '{printf "%.2f", $NF}')${baseline:+ / $(echo "$base_cpus" | awk '{printf "%.2f", $NF}')} µs CPU per row |"
done
catchup_rate=$(echo "$rates" | median)
cpu_us=$(echo "$cpus" | median)
raw_rate=$(echo "$raws" | median)
peak_kb=$catchup_peak batch=$catchup_batch
if [ -n "$baseline" ]; then
    base_rate=$(echo "$base_rates" | median)
    base_cpu=$(echo "$base_cpus" | median)
fi

# --- 3. light load latency ----------------------------------------------------------
ltopic="bench_light_$run_id"
ltable="light_$run_id"
sql "$(orders_ddl "$ltable")"
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$ltopic" --partitions 3 --count 0 >&2
config "$ltopic" "$ltable" 9472 >"$work/light.toml"
"$sluice" run --config "$work/light.toml" 2>"$work/light.log" &
lpid=$!
sleep 8 # join the group
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$ltopic" --partitions 3 --count 15000 --rate 500 >&2
sleep 3
lat=$(sql "select round(percentile_cont(0.5) within group (order by ms)::numeric, 1) || ' ms / ' ||
                  round(percentile_cont(0.99) within group (order by ms)::numeric, 1) || ' ms (' || count(*) || ' rows)'
             from (select extract(epoch from inserted_at - kafka_ts) * 1000 as ms from $ltable) t")
interval=$(curl -s 127.0.0.1:9472/metrics | awk '/^sluice_flush_interval_seconds/ {printf "%.0f ms", $2 * 1000}')
kill -TERM $lpid; wait $lpid || true

cat <<OUT
## $(date -u +%Y-%m-%d) — $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(sql "show server_version" | cut -d' ' -f1), broker: $SLUICE_KAFKA_BROKERS

| measure | value |
| --- | --- |
| raw \`\\copy\` of the same $events rows into the same table shape (median of $rounds, one per round) | $(printf '%.0f' "$raw_rate") rows/s |
| sluice catch-up, first row to last (median of $rounds) | $(printf '%.0f' "$catchup_rate") rows/s ($(echo "100 * $catchup_rate / $raw_rate" | bc -l | xargs printf '%.0f') % of raw) |
| batch size adaptive flushing settled on (mean rows per flush) | $batch |
| sluice CPU (user + system) per row during catch-up | $(printf '%.2f' "$cpu_us") µs |
| peak RSS during catch-up (default 64 MiB buffer) | $((peak_kb / 1024)) MiB |
| light load (500 events/s, 30 s): Kafka timestamp → row inserted, p50 / p99 | $lat |
| flush interval at light load | $interval |
OUT
if [ -n "$baseline" ]; then
    cat <<OUT
| baseline ($baseline) catch-up, same run, median of $rounds | $(printf '%.0f' "$base_rate") rows/s ($(echo "100 * $base_rate / $raw_rate" | bc -l | xargs printf '%.0f') % of raw), $(printf '%.2f' "$base_cpu") µs CPU per row, peak RSS $((base_peak / 1024)) MiB |
OUT
fi
printf '%s\n' "${rounds_text#?}"
