//! Integration tests against a real Kafka-protocol broker and a real
//! Postgres (see `harness`). Run them with `scripts/test.sh`.

mod backpressure;
mod chaos;
mod cli;
mod containers;
mod dead_letters;
mod delivery;
mod deploy;
mod fencing;
mod formats;
mod harness;
mod mappings;
mod membership;
mod memory;
mod offsets;
mod outage;
mod rebalance;
mod secrets;
mod startup;
mod telemetry;
mod timeouts;
mod tls;
mod upsert;
