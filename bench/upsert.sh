#!/usr/bin/env bash
# Upsert catch-up throughput against its raw limit, in one run.
#
#   bench/upsert.sh     # 1,000,000 events over 100,000 keys;
#                       # SLUICE_BENCH_EVENTS / SLUICE_BENCH_KEYS to change
#
# 1. upsert catch-up: N events cycling over K keys produced first, then sluice
#    (release build, mode = "upsert", key = order_id) started; throughput in
#    records per second from the first row landing until the stored offsets
#    cover all N records. The table ends with K rows.
# 2. the same records in insert mode into a plain table (all N rows): the
#    insert-mode catch-up rate for comparison, and the rows for step 3.
# 3. raw limit: psql, in one transaction per batch of the size sluice used on
#    average: COPY the batch's rows into a temporary table, then the very
#    statement sluice runs (DISTINCT ON the key, last offset wins,
#    INSERT ... ON CONFLICT DO UPDATE) into an identical empty table.
#
# Prints a block to paste into bench/RESULTS.md. Set-up: bench/common.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=${SLUICE_BENCH_EVENTS:-1000000}
keys=${SLUICE_BENCH_KEYS:-100000}
unset SLUICE_BENCH_EVENTS SLUICE_BENCH_KEYS
# shellcheck source=bench/common.sh
source bench/common.sh

cols="order_id, customer, amount, created_at, doc, kafka_offset"
table_ddl() { # name [primary key?]
    echo "create table $1 (order_id bigint $2, customer text, amount numeric(12,2),
          created_at timestamptz, doc jsonb, kafka_offset bigint)"
}

columns='order_id = "/id"
customer = "/customer/name"
amount = "/amount"
created_at = "/ts"
doc = "/"
kafka_offset = "@offset"'
config() { # group topic table port mode
    sluice_config "$1" "$2" "$3" "127.0.0.1:$4" bench "$columns" "$5"
}

covered() { # group topic
    sql "select coalesce(sum(next_offset), 0) from sluice.offsets where group_id = '$1' and topic = '$2'"
}

# Runs sluice until the group's stored offsets cover every event; prints
# "<records/s> <mean batch rows>".
catch_up() { # group topic table port mode
    config "$@" >"$work/$1.toml"
    "$sluice" run --config "$work/$1.toml" 2>"$work/$1.log" &
    local pid=$! t0 t1 batch
    while [ "$(sql "select count(*) from $3")" = 0 ]; do sleep 0.05; done
    t0=$(date +%s.%N)
    while [ "$(covered "$1" "$2")" -lt "$events" ]; do sleep 0.1; done
    t1=$(date +%s.%N)
    batch=$(curl -s "127.0.0.1:$4/metrics" | awk '/^sluice_batch_rows_sum/ {s=$2} /^sluice_batch_rows_count/ {c=$2} END {if (c) printf "%.0f", s/c}')
    kill -TERM $pid
    wait $pid || true
    echo "$(echo "$events / ($t1 - $t0)" | bc -l) $batch"
}


topic="bench_upsert_$run_id"
"$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 3 --count "$events" --keys "$keys" >&2

# --- 1. upsert catch-up ----------------------------------------------------------
up="upsert_$run_id"
sql "$(table_ddl "$up" "primary key")"
read -r up_rate up_batch < <(catch_up "bench-up-$run_id" "$topic" "$up" 9481 "mode = \"upsert\"
key = [\"order_id\"]")
up_rows=$(sql "select count(*) from $up")

# --- 2. insert-mode catch-up of the same records (all rows, for step 3) ----------
all="all_$run_id"
sql "$(table_ddl "$all" "")"
read -r ins_rate _ < <(catch_up "bench-ins-$run_id" "$topic" "$all" 9482 "")

# --- 3. raw limit: COPY into a temporary table + the same upsert, per batch ----
batch=${up_batch:-10000}
raw="raw_$run_id"
sql "$(table_ddl "$raw" "primary key")"
# The records in Kafka order per partition, numbered; cut into batches of the
# mean size sluice used.
sql "copy (select $cols from $all order by kafka_offset, order_id) to stdout" >"$work/rows.tsv"
split -l "$batch" -d -a 5 "$work/rows.tsv" "$work/part."
updates=$(echo "$cols" | tr ',' '\n' | sed 's/ //g' | grep -v '^order_id$' | awk '{printf "%s%s = excluded.%s", (NR>1?", ":""), $1, $1}')
{
    for part in "$work"/part.*; do
        echo "begin;"
        echo "create temp table stage on commit drop as select $cols from $raw with no data;"
        echo "alter table stage add column ord bigserial;"
        echo "\\copy stage ($cols) from '$part'"
        echo "insert into $raw ($cols) select $cols from (select distinct on (order_id) * from stage order by order_id, ord desc) last on conflict (order_id) do update set $updates;"
        echo "commit;"
    done
} >"$work/raw.sql"
r0=$(date +%s.%N)
psql "$db_url" -Xq -v ON_ERROR_STOP=1 -f "$work/raw.sql" >/dev/null
r1=$(date +%s.%N)
raw_rate=$(echo "$events / ($r1 - $r0)" | bc -l)
raw_rows=$(sql "select count(*) from $raw")
same=$(sql "select count(*) from $raw r join $up u using (order_id) where (r.customer, r.amount, r.kafka_offset) is not distinct from (u.customer, u.amount, u.kafka_offset)")

cat <<OUT
## $(date -u +%Y-%m-%d) upsert — $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(sql "show server_version" | cut -d' ' -f1), broker: $SLUICE_KAFKA_BROKERS

$events events over $keys keys, 3 partitions.

| measure | value |
| --- | --- |
| raw limit: psql COPY into a temp table + the same \`INSERT … ON CONFLICT\`, batches of $batch | $(printf '%.0f' "$raw_rate") records/s ($raw_rows rows) |
| sluice upsert catch-up, first row to all offsets stored | $(printf '%.0f' "$up_rate") records/s ($(echo "100 * $up_rate / $raw_rate" | bc -l | xargs printf '%.0f') % of raw; $up_rows rows) |
| mean batch (records per flush) | $up_batch |
| same records, insert mode (all rows), for comparison | $(printf '%.0f' "$ins_rate") records/s |
| rows identical between sluice's table and the raw one | $same of $keys |
OUT
