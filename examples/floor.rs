//! The latency floor of a topic: a bare librdkafka consumer that does
//! nothing with the records but note, per record, the time from its Kafka
//! timestamp to its arrival. `bench/latency.sh` runs it beside sluice on the
//! same records, so sluice's latency is read against what any consumer on
//! this broker gets (producer linger and the broker's fetch handling).
//!
//! ```text
//! cargo run --example floor -- --brokers 127.0.0.1:9092 --topic orders \
//!     --count 30000 [--fetch-wait-ms 500]
//! ```
//!
//! Prints `assigned` on stderr once it holds the topic's partitions (start
//! producing after that), then, on stdout, once `--count` records arrived:
//! `p50 / p90 / p99 / p99.9 / max ms (n records)`.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Records to wait for (after the skipped ones).
    #[arg(long)]
    count: usize,
    /// Records read first and left out of the figures (a warm-up); "warmed
    /// up" is printed on stderr once they are read.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// librdkafka's `fetch.wait.max.ms` (500 by default, as in sluice).
    #[arg(long, default_value_t = 500)]
    fetch_wait_ms: u64,
    /// Give up after this many seconds without a record.
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("floor-{}-{}", args.topic, now_ms()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", args.fetch_wait_ms.to_string())
        .create()
    {
        Ok(c) => c,
        Err(err) => {
            eprintln!("floor: cannot create the consumer: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = consumer.subscribe(&[&args.topic]) {
        eprintln!("floor: cannot subscribe to {}: {err}", args.topic);
        return ExitCode::FAILURE;
    }
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        if let Some(Err(err)) = consumer.poll(Duration::from_millis(100)) {
            eprintln!("floor: {err}");
        }
    }
    eprintln!("assigned");
    let mut latencies: Vec<f64> = Vec::with_capacity(args.count);
    let mut last = Instant::now();
    let mut skipped = 0;
    if args.skip == 0 {
        eprintln!("warmed up");
    }
    while latencies.len() < args.count {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) if skipped < args.skip => {
                skipped += 1;
                if skipped == args.skip {
                    eprintln!("warmed up");
                }
                last = Instant::now();
            }
            Some(Ok(msg)) => {
                if let Some(ts) = msg.timestamp().to_millis() {
                    latencies.push((now_ms() - ts) as f64);
                }
                last = Instant::now();
            }
            Some(Err(err)) => eprintln!("floor: {err}"),
            None if last.elapsed() > Duration::from_secs(args.idle_timeout_s) => {
                eprintln!(
                    "floor: no record for {} s; {} of {} arrived",
                    args.idle_timeout_s,
                    latencies.len(),
                    args.count
                );
                return ExitCode::FAILURE;
            }
            None => {}
        }
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((q * latencies.len() as f64) as usize).min(latencies.len() - 1)];
    println!(
        "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} ms ({} records)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        latencies[latencies.len() - 1],
        latencies.len()
    );
    ExitCode::SUCCESS
}
