#!/usr/bin/env bash
# Chaos soak: the chaos test (tests/it/chaos.rs) over many seeds at a larger
# volume, with a summary to paste into bench/RESULTS.md.
#
#   bench/soak.sh                      # seeds 1..10, 200,000 good events, 20 faults each
#   SLUICE_SOAK_SEEDS="7 8 9" bench/soak.sh
#   SLUICE_SOAK_RUNS=30 SLUICE_SOAK_FIRST=100 bench/soak.sh   # seeds 100..129
#
# Settings (environment):
#   SLUICE_SOAK_SEEDS      explicit seeds (default: SLUICE_SOAK_FIRST .. +SLUICE_SOAK_RUNS-1)
#   SLUICE_SOAK_FIRST      first seed (default 1);  SLUICE_SOAK_RUNS  number of seeds (default 10)
#   SLUICE_SOAK_EVENTS     good events of the tight pipeline per run (default 200000)
#   SLUICE_SOAK_FAULTS     faults per schedule (default 20; each kind at least once)
#   SLUICE_SOAK_DLQ_LARGE  on|off: the >1 MB dead letter for the Kafka DLQ topic (default on)
#   SLUICE_SOAK_DRAIN_SECS how long a run may take to drain after its last fault (default 180)
#
# Every run is the same test as in CI (debug build of sluice, real tansu and a
# private Postgres cluster), only with SLUICE_CHAOS_* set; a failing seed is
# replayed with the line the test prints. Runs go on after a failing seed.
# Each run appends one JSON line to the summary file (kept, path printed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

first=${SLUICE_SOAK_FIRST:-1}
runs=${SLUICE_SOAK_RUNS:-10}
seeds=${SLUICE_SOAK_SEEDS:-$(seq "$first" $((first + runs - 1)))}
events=${SLUICE_SOAK_EVENTS:-200000}
faults=${SLUICE_SOAK_FAULTS:-20}
dlq_large=${SLUICE_SOAK_DLQ_LARGE:-on}
drain=${SLUICE_SOAK_DRAIN_SECS:-180}
unset SLUICE_SOAK_SEEDS SLUICE_SOAK_FIRST SLUICE_SOAK_RUNS SLUICE_SOAK_EVENTS SLUICE_SOAK_FAULTS \
    SLUICE_SOAK_DLQ_LARGE SLUICE_SOAK_DRAIN_SECS

# shellcheck source=scripts/services.sh
source scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
cargo build --bin sluice >&2
cargo nextest run --no-run --test it >&2

summary=${SLUICE_CHAOS_SUMMARY:-$(mktemp -t sluice-soak.XXXXXX.jsonl)}
logs=$(mktemp -d -t sluice-soak-logs.XXXXXX)
echo "soak: summary lines go to $summary, test output to $logs" >&2
started=$SECONDS
for seed in $seeds; do
    echo "soak: seed $seed ($events events, $faults faults, dlq_large $dlq_large)" >&2
    if SLUICE_CHAOS_SEED=$seed SLUICE_CHAOS_EVENTS=$events SLUICE_CHAOS_FAULTS=$faults \
        SLUICE_CHAOS_DLQ_LARGE=$dlq_large SLUICE_CHAOS_DRAIN_SECS=$drain SLUICE_CHAOS_SUMMARY=$summary \
        cargo nextest run --test it --no-capture -E 'test(chaos_schedule)' >"$logs/seed-$seed.log" 2>&1; then
        echo "soak: seed $seed passed" >&2
    else
        echo "soak: seed $seed FAILED (output: $logs/seed-$seed.log)" >&2
        grep -E '^  chaos_|violations \(' "$logs/seed-$seed.log" | head -20 >&2 || true
    fi
done

# The block for bench/RESULTS.md.
python3 - "$summary" "$((SECONDS - started))" <<'PY'
import json, sys, collections
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
faults, violations = collections.Counter(), collections.Counter()
for r in runs:
    faults.update(r["faults"])
    violations.update(r["violations"])
print(f"runs: {len(runs)} in {int(sys.argv[2])} s; seeds: {' '.join(str(r['seed']) for r in runs)}")
print(f"records checked: {sum(r['records_checked'] for r in runs):,}; "
      f"buffer refusals logged: {sum(r['refusals_logged'] for r in runs):,}")
print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
print("violations: " + (", ".join(f"{k} {v:,}" for k, v in sorted(violations.items())) or "none"))
print()
print("| seed | records | faults | refusals | converged | violations |")
print("| --- | --- | --- | --- | --- | --- |")
for r in runs:
    v = ", ".join(f"{k} {n:,}" for k, n in sorted(r["violations"].items())) or "none"
    print(f"| {r['seed']} | {r['records_checked']:,} | {r['steps']} | {r['refusals_logged']:,} | "
          f"{'yes' if r['converged'] else 'no'} | {v} |")
PY
