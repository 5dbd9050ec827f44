# Shared set-up of the bench scripts, sourced from the repository root after
# a script has read its own SLUICE_BENCH_* settings and unset them (sluice
# refuses unknown SLUICE_* variables). Starts/checks the local services
# (scripts/services.sh), builds the release binaries, creates the
# sluice_bench database with sluice's schema, and sets:
#   sluice, produce, floor   the release binaries
#   db_url            the sluice_bench database
#   run_id            a number naming this run's topics and tables
#   work              a scratch directory, removed on exit (with any sluice
#                     left running)
#   sql QUERY         runs QUERY there, unaligned output
#   sluice_config GROUP TOPIC TABLE HTTP_ADDR PIPELINE COLUMNS [EXTRA]
#                     prints a config of one pipeline; COLUMNS is its
#                     [pipelines.columns] block, EXTRA more pipeline keys
#   orders_ddl NAME   the CREATE TABLE of the sample orders' table, with
#                     `inserted_at` (clock_timestamp() during the COPY)
#   orders_columns    its [pipelines.columns] block
# shellcheck shell=bash

# shellcheck source=scripts/services.sh
source scripts/services.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
cargo build --release --bin sluice --example produce --example floor >&2
sluice="$CARGO_TARGET_DIR/release/sluice"
produce="$CARGO_TARGET_DIR/release/examples/produce"
floor="$CARGO_TARGET_DIR/release/examples/floor"
admin=$SLUICE_TEST_DATABASE_URL
db_url="${admin%/*}/sluice_bench"
psql "$admin" -XqtAc "select 1 from pg_database where datname = 'sluice_bench'" | grep -q 1 ||
    psql "$admin" -Xqc "create database sluice_bench"
sql() { psql "$db_url" -XqtA -v ON_ERROR_STOP=1 -c "$1"; }
run_id=$(date +%s)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

orders_ddl() { # name
    echo "create table $1 (order_id bigint primary key, customer text, amount numeric(12,2),
          created_at timestamptz, doc jsonb, kafka_offset bigint, kafka_ts timestamptz,
          inserted_at timestamptz not null default clock_timestamp())"
}

# shellcheck disable=SC2034 # used by the scripts that source this file
orders_columns='order_id = "/id"
customer = "/customer/name"
amount = "/amount"
created_at = "/ts"
doc = "/"
kafka_offset = "@offset"
kafka_ts = "@timestamp"'

sluice_config() { # group topic table http_addr pipeline columns [extra]
    cat <<TOML
shutdown_timeout = "30s"
[kafka]
brokers = "$SLUICE_KAFKA_BROKERS"
group_id = "$1"
session_timeout = "6s"
[postgres]
url = "$db_url"
[telemetry]
http_addr = "$4"
[[pipelines]]
name = "$5"
topics = ["$2"]
table = "$3"
${7:-}
[pipelines.columns]
$6
TOML
}

sluice_config migrate migrate migrate off migrate 'x = "/x"' >"$work/migrate.toml"
"$sluice" migrate --config "$work/migrate.toml" >/dev/null
