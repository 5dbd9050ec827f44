#!/usr/bin/env bash
# sluice's full check, as run by CI (.ci/run) and by hand:
#
#   scripts/test.sh [args for the test runner]     e.g. scripts/test.sh -E 'test(backpressure)'
#
# Starts/checks the local services (scripts/services.sh), then runs
# cargo fmt --check, cargo clippy (-D warnings), builds the sluice binary for the
# integration tests to spawn, and runs the whole test suite with cargo-nextest
# (or `cargo test` when nextest is not installed or SLUICE_TEST_RUNNER=cargo).
#
# The build goes to CARGO_TARGET_DIR (default /var/tmp/sluice-target, outside the
# clone) so that repeated fresh-clone CI runs on one machine reuse it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# tansu keeps every topic in memory for as long as it runs, and one pass of
# the suite produces a few million events. Restart the local broker (losing
# only old test topics) once it has grown past 3 GiB, before the services check
# starts it again.
_tansu_pidfile="${SLUICE_TOOLS_DIR:-${HOME:-/tmp}/.cache/sluice}/tansu.pid"
if [ -z "${SLUICE_KAFKA_BROKERS:-}" ] && [ -s "$_tansu_pidfile" ]; then
    _tansu_pid=$(cat "$_tansu_pidfile")
    _tansu_rss=$(ps -o rss= -p "$_tansu_pid" 2>/dev/null | tr -d ' ' || true)
    if [ -n "$_tansu_rss" ] && [ "$_tansu_rss" -gt 3145728 ]; then
        printf 'sluice: tansu uses %s MiB; restarting it\n' "$((_tansu_rss / 1024))" >&2
        kill -INT "$_tansu_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$_tansu_pid" 2>/dev/null || break; sleep 0.1; done
    fi
fi

# shellcheck source=scripts/services.sh
source scripts/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
export SLUICE_KAFKA_BROKERS SLUICE_TEST_DATABASE_URL
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# The binary `cargo build --bin sluice` below produces (tests normally use
# CARGO_BIN_EXE_sluice). Only SLUICE_TEST_* names: sluice rejects unknown
# SLUICE_* variables, and the processes the tests spawn inherit this environment.
export SLUICE_TEST_BIN="$CARGO_TARGET_DIR/debug/sluice"

say() { printf 'sluice: %s\n' "$*" >&2; }

step() {
    local start=$SECONDS
    say "==> $*"
    "$@"
    say "    done in $((SECONDS - start))s: $*"
}

runner=${SLUICE_TEST_RUNNER:-}
if [ -z "$runner" ]; then
    if cargo nextest --version >/dev/null 2>&1; then
        runner=nextest
    else
        runner=cargo
        say "cargo-nextest not found, falling back to cargo test (install: cargo install --locked cargo-nextest)"
    fi
fi
case "$runner" in
nextest | cargo) ;;
*)
    say "error: SLUICE_TEST_RUNNER must be nextest or cargo, not '$runner'"
    exit 2
    ;;
esac

say "CARGO_TARGET_DIR=$CARGO_TARGET_DIR, test runner: $runner"

step cargo fmt --all --check
step cargo clippy --all-targets -- -D warnings
step cargo build --bin sluice
if [ "$runner" = nextest ]; then
    step cargo nextest run --no-fail-fast "$@"
    # nextest does not run doctests; run them too unless the caller filtered the run.
    if [ "$#" -eq 0 ]; then
        step cargo test --doc
    fi
else
    step cargo test --no-fail-fast "$@"
fi
say "all checks passed"
