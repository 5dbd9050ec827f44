#!/usr/bin/env bash
# Failover: how long the partitions of a member that goes away stand still
# before they flow again, per rebalance protocol.
#
#   bench/failover.sh                                 # eager, cooperative, static-eager
#   SLUICE_BENCH_MODES="cooperative" bench/failover.sh
#   SLUICE_BENCH_MODES=static SLUICE_BENCH_EVENTS=restart bench/failover.sh
#   SLUICE_BENCH_KAFKA='properties = { "heartbeat.interval.ms" = "1000" }' bench/failover.sh
#                                                     # more [kafka] keys
#
# Two members (release build) share a 12-partition topic that a producer
# feeds at SLUICE_BENCH_RATE events/s (default 2,000) the whole time. For
# each mode (`eager`, `cooperative`, `static-eager` = eager with
# kafka.instance_id; `static` = cooperative with it is not in the default
# set: on tansu its cooperative hand-over never finishes, see RESULTS.md),
# three events hit member B once both members hold partitions:
#   kill      SIGKILL; B stays down: A takes over after the session timeout
#   term      SIGTERM; B flushes, leaves the group, stays down
#   restart   SIGKILL and B started again at once (a crash loop, a deploy)
# The figure is the time from the event until every partition B held has
# its stored offset (sluice.offsets) advanced past where it stood at the
# event: the partitions flow again, on whichever member. Polled every 50 ms.
# Also printed: how long A's own partitions stood still meanwhile (the
# stop-the-world share). session_timeout is 6 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

modes=${SLUICE_BENCH_MODES:-eager cooperative static-eager}
rate=${SLUICE_BENCH_RATE:-2000}
extra_kafka=${SLUICE_BENCH_KAFKA:-}
events=${SLUICE_BENCH_EVENTS:-kill term restart}
unset SLUICE_BENCH_MODES SLUICE_BENCH_RATE SLUICE_BENCH_KAFKA SLUICE_BENCH_EVENTS
# shellcheck source=bench/common.sh
source bench/common.sh

now() { date +%s.%N; }

# The partitions a member holds, from its /status, one per line.
held() { # http_addr
    curl -sf "http://$1/status" 2>/dev/null |
        python3 -c 'import json,sys
d=json.load(sys.stdin)
for t in d["kafka"]["group"]["assignment"]:
    for p in t["partitions"]: print(p)' 2>/dev/null || true
}

# Waits until A and B (if alive) together hold all 12 partitions, each some.
await_split() { # a_addr b_addr|-
    local a b deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        a=$(held "$1" | wc -l)
        if [ "$2" = - ]; then b=0; else b=$(held "$2" | wc -l); fi
        if [ "$a" -gt 0 ] && { [ "$2" = - ] || [ "$b" -gt 0 ]; } && [ $((a + b)) -eq 12 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "the members never split the partitions" >&2
    return 1
}

offsets() { # group topic -> "partition next" lines
    sql "select partition, next_offset from sluice.offsets where group_id = '$1' and topic = '$2' order by 1" | tr '|' ' '
}

# Waits until every partition in $3 (space-separated) has advanced past its
# offset in the snapshot $4; prints the seconds since $5. Also prints the
# longest time the partitions in $6 stood still meanwhile.
await_flowing() { # group topic "parts" snapshot t0 "other parts"
    local group=$1 topic=$2 parts=$3 snap=$4 t0=$5 others=$6 deadline=$((SECONDS + 120))
    local other_sum last_other last_move t
    last_other=$(awk -v ps=" $others " 'index(ps, " " $1 " ") {s += $2} END {print s + 0}' "$snap")
    last_move=$t0
    local longest=0
    while [ $SECONDS -lt $deadline ]; do
        offsets "$group" "$topic" >"$work/now"
        t=$(now)
        other_sum=$(awk -v ps=" $others " 'index(ps, " " $1 " ") {s += $2} END {print s + 0}' "$work/now")
        if [ "$other_sum" != "$last_other" ]; then
            longest=$(echo "$longest $t $last_move" | awk '{d = $2 - $3; print (d > $1 ? d : $1)}')
            last_other=$other_sum
            last_move=$t
        fi
        if awk -v ps=" $parts " 'NR == FNR {was[$1] = $2; next} index(ps, " " $1 " ") && $2 > was[$1] {n++}
            END {exit !(n == split(ps, _, " ") - 0)}' "$snap" "$work/now"; then
            longest=$(echo "$longest $t $last_move" | awk '{d = $2 - $3; print (d > $1 ? d : $1)}')
            echo "$t $t0 $longest" | awk '{printf "%.2f %.2f\n", $1 - $2, $3}'
            return 0
        fi
        sleep 0.05
    done
    echo "timeout -"
}

printf '%-12s %-8s %12s %14s\n' mode event "flowing (s)" "A still (s)"
for mode in $modes; do
    topic="bench_failover_${mode//-/_}_$run_id"
    table="failover_${mode//-/_}_$run_id"
    group="failover-$mode-$run_id"
    sql "$(orders_ddl "$table")"
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 12 --count 0 >&2
    case $mode in
    eager) kafka="rebalance_protocol = \"eager\"\n$extra_kafka" ;;
    cooperative | static) kafka="rebalance_protocol = \"cooperative\"\n$extra_kafka" ;;
    static-eager) kafka="rebalance_protocol = \"eager\"\n$extra_kafka" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    member_config() { # name addr
        sluice_config "$group" "$topic" "$table" "$2" p "$orders_columns" |
            sed "s/^session_timeout = \"6s\"/session_timeout = \"6s\"\n$kafka/"
    }
    member_config a 127.0.0.1:9481 >"$work/a.toml"
    member_config b 127.0.0.1:9482 >"$work/b.toml"
    start() { # name
        if [ "${mode%-eager}" = static ]; then
            SLUICE_KAFKA__INSTANCE_ID="failover-$1" "$sluice" run --config "$work/$1.toml" 2>>"${SLUICE_BENCH_LOGS:-$work}/$mode-$1.log" &
        else
            "$sluice" run --config "$work/$1.toml" 2>>"${SLUICE_BENCH_LOGS:-$work}/$mode-$1.log" &
        fi
        eval "pid_$1=$!"
    }
    "$produce" --brokers "$SLUICE_KAFKA_BROKERS" --topic "$topic" --partitions 12 \
        --count $((rate * 3600)) --rate "$rate" >/dev/null 2>&1 &
    producer=$!
    start a
    await_split 127.0.0.1:9481 -
    for event in $events; do
        start b
        await_split 127.0.0.1:9481 127.0.0.1:9482
        sleep 2 # both writing
        b_parts=$(held 127.0.0.1:9482 | tr '\n' ' ')
        a_parts=$(held 127.0.0.1:9481 | tr '\n' ' ')
        offsets "$group" "$topic" >"$work/snap"
        t0=$(now)
        case $event in
        kill | restart) kill -9 "$pid_b" ;;
        term) kill -TERM "$pid_b" ;;
        esac
        if [ "$event" = restart ]; then
            wait "$pid_b" 2>/dev/null || true
            start b
        fi
        read -r flowing still < <(await_flowing "$group" "$topic" "$b_parts" "$work/snap" "$t0" "$a_parts")
        printf '%-12s %-8s %12s %14s\n' "$mode" "$event" "$flowing" "$still"
        if [ "$event" = restart ]; then
            kill -TERM "$pid_b" 2>/dev/null || true
        fi
        wait "$pid_b" 2>/dev/null || true
        # Before the next event, A alone holds everything again.
        await_split 127.0.0.1:9481 -
    done
    kill -TERM "$pid_a" 2>/dev/null || true
    wait "$pid_a" 2>/dev/null || true
    kill "$producer" 2>/dev/null || true
    wait "$producer" 2>/dev/null || true
done
