#!/usr/bin/env bash
# Dead letters: catch-up throughput with 1 % poison against the clean run and
# against raw COPY, in one run.
#
#   bench/poison.sh     # 100,000 good events, 5 rounds;
#                       # SLUICE_BENCH_EVENTS / SLUICE_BENCH_ROUNDS to change;
#                       # SLUICE_BENCH_REUSE=<run id> reuses that run's topics
#
# Two topics of 3 partitions are produced first (examples/produce.rs):
#   clean:    N good events of the strict table (tests/it/dead_letters.rs),
#   poisoned: the same N good events with one bad record after every 100 of
#             them (malformed JSON, truncated UTF-8, wrong types, smallint
#             and numeric overflow, null into NOT NULL, duplicate primary
#             keys, CHECK violations, three 5 MB values, empty values, binary
#             garbage: examples/common/poison_corpus.rs).
# Each round then runs sluice (release build, default settings) from the
# start of each topic with a fresh group into a fresh strict table — clean
# and poisoned alternately, so drift on the machine hits both — and measures
# good rows per second from the first row landing until the group's stored
# offsets cover every record (every good row in its table, every bad record
# in sluice.dead_letters), timed by the database's clock. The raw limit is
# psql COPYing the same N rows, in batches of 10,000, one transaction each,
# into an identical empty strict table.
#
# Prints a block to paste into bench/RESULTS.md. Set-up: bench/common.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

events=${SLUICE_BENCH_EVENTS:-100000}
rounds=${SLUICE_BENCH_ROUNDS:-5}
reuse=${SLUICE_BENCH_REUSE:-}
unset SLUICE_BENCH_EVENTS SLUICE_BENCH_ROUNDS SLUICE_BENCH_REUSE
# shellcheck source=bench/common.sh
source bench/common.sh

# The strict table and its mapping, as the test has them.
strict_ddl() { "$produce" --print-ddl "$1"; }
cols="id, qty, price, name, score, kafka_partition, kafka_offset"

# Runs sluice on a topic of `records` records until the stored offsets cover
# them all; prints good rows per second (database clock, first row written to
# the commit covering the last record) and the rows in the table.
catch_up() { # topic records
    local group="bench-$1-$RANDOM$RANDOM" table="t_$RANDOM$RANDOM"
    sql "$(strict_ddl "$table")"
    # Each run starts from a fresh checkpoint, so that none lands inside
    # one run and not another (a run writes ~100 MB of WAL per million rows).
    sql "checkpoint"
    # A pipeline name of its own: dead letters are stored once per pipeline
    # and record, so a second run under the same name would skip inserting them.
    sluice_config "$group" "$1" "$table" off "p$RANDOM$RANDOM" "$("$produce" --print-columns)" >"$work/$group.toml"
    "$sluice" run --config "$work/$group.toml" 2>"$work/$group.log" &
    local pid=$!
    while [ "$(sql "select coalesce(sum(next_offset), 0) from sluice.offsets where group_id = '$group'")" -lt "$2" ]; do
        kill -0 $pid 2>/dev/null || { cat "$work/$group.log" >&2; exit 1; }
        sleep 0.1
    done
    kill -TERM $pid
    wait $pid || true
    # The offsets' updated_at is the start of the transaction that stored
    # them; the last row's written_at is later within the same transaction
    # when it carried rows.
    sql "select round($events / extract(epoch from greatest(max(o.updated_at), (select max(written_at) from $table)) - (select min(written_at) from $table))),
                (select count(*) from $table)
         from sluice.offsets o where group_id = '$group'" | tr '|' ' '
    echo "$table" >"$work/last_table"
}


clean="bench_clean_${reuse:-$run_id}"
poisoned="bench_poison_${reuse:-$run_id}"
if [ -z "$reuse" ]; then
    echo "run id $run_id (SLUICE_BENCH_REUSE=$run_id reuses its topics)" >&2
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$clean" --partitions 3 --count "$events" --corpus strict >&2
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$poisoned" --partitions 3 --count "$events" --corpus poison >&2
fi
poisoned_records=$((events + events / 100))

clean_rates=() poison_rates=()
for round in $(seq "$rounds"); do
    read -r c rows < <(catch_up "$clean" "$events")
    [ "$rows" = "$events" ] || { echo "clean run: $rows rows, expected $events" >&2; exit 1; }
    before=$(sql "select count(*) from sluice.dead_letters where topic = '$poisoned'")
    read -r p rows < <(catch_up "$poisoned" "$poisoned_records")
    [ "$rows" = "$events" ] || { echo "poisoned run: $rows rows, expected $events" >&2; exit 1; }
    letters=$(($(sql "select count(*) from sluice.dead_letters where topic = '$poisoned'") - before))
    [ "$letters" = "$((events / 100))" ] || { echo "poisoned run: $letters dead letters, expected $((events / 100))" >&2; exit 1; }
    echo "round $round: clean $c rows/s, poisoned $p rows/s ($((100 * p / c)) %); $letters dead letters" >&2
    clean_rates+=("$c") poison_rates+=("$p")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
clean_median=$(median "${clean_rates[@]}")
poison_median=$(median "${poison_rates[@]}")
ratios=()
for i in "${!clean_rates[@]}"; do ratios+=("$((100 * poison_rates[i] / clean_rates[i]))"); done

# Raw limit: the same good rows, COPYed by psql in batches of 10,000.
last=$(cat "$work/last_table")
raw="raw_$run_id"
sql "$(strict_ddl "$raw")"
sql "copy (select $cols from $last order by kafka_partition, kafka_offset) to stdout" >"$work/rows.tsv"
split -l 10000 -d -a 5 "$work/rows.tsv" "$work/part."
for part in "$work"/part.*; do echo "\\copy $raw ($cols) from '$part'"; done >"$work/raw.sql"
r0=$(date +%s.%N)
psql "$db_url" -Xq -v ON_ERROR_STOP=1 -f "$work/raw.sql" >/dev/null
r1=$(date +%s.%N)
raw_rate=$(echo "$events / ($r1 - $r0)" | bc -l | xargs printf '%.0f')

cat <<OUT
## $(date -u +%Y-%m-%d) dead letters — $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), PostgreSQL $(sql "show server_version" | cut -d' ' -f1), broker: $SLUICE_KAFKA_BROKERS

$events good events on 3 partitions; poisoned: + $((events / 100)) bad records (1 %). $rounds rounds, clean and poisoned alternately.

| measure | value |
| --- | --- |
| raw limit: psql COPY of the same rows, batches of 10,000 | $raw_rate rows/s |
| sluice, clean, median (rounds) | $clean_median rows/s (${clean_rates[*]}) — $((100 * ${clean_median%.*} / raw_rate)) % of raw |
| sluice, poisoned, median (rounds) | $poison_median rows/s (${poison_rates[*]}) — $((100 * ${poison_median%.*} / raw_rate)) % of raw |
| poisoned / clean, per round | ${ratios[*]} % |
| poisoned / clean, medians | $(echo "100 * $poison_median / $clean_median" | bc -l | xargs printf '%.0f') % |
OUT
