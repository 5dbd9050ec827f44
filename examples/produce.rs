//! Produce sample JSON order events to Kafka, for trying sluice out.
//!
//! ```text
//! cargo run --example produce -- --brokers 127.0.0.1:9092 --topic orders \
//!     --partitions 3 --count 1000 [--rate 500] [--start-id 1]
//! ```
//!
//! Each event is keyed by its id (so an id always lands on the same partition)
//! and looks like:
//!
//! ```json
//! {"id": 42, "customer": {"name": "customer-42"}, "amount": "73.50",
//!  "ts": "2026-11-27T03:30:00.123Z",
//!  "items": [{"sku": "SKU-0042", "qty": 2, "unit_price": "36.75"}]}
//! ```
//!
//! `--corpus strict` produces instead the good events of the dead-letter
//! tests' strict table (`examples/common/poison_corpus.rs`), and `--corpus
//! poison` the same with 1 % bad records of every kind mixed in (`--count`
//! counts the good ones); record `n` goes to partition `n % partitions`.
//!
//! The topic is created with `--partitions` partitions when it does not exist
//! yet. Every message's delivery report is checked; the program exits non-zero
//! when any message was not delivered.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde_json::json;

#[path = "common/poison_corpus.rs"]
mod poison_corpus;

/// The order events as Avro, for `--avro-registry`.
mod avro {
    use anyhow::Context as _;
    use apache_avro::types::Value;
    use apache_avro::{Decimal, Schema};

    const SCHEMA: &str = r#"{"type":"record","name":"Order","namespace":"sluice.bench","fields":[
      {"name":"id","type":"long"},
      {"name":"customer","type":{"type":"record","name":"Customer","fields":[{"name":"name","type":"string"}]}},
      {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
      {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
      {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
        {"name":"sku","type":"string"},{"name":"qty","type":"long"},
        {"name":"unit_price","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}}]}}}]}"#;

    pub struct Orders {
        schema: Schema,
        /// Magic byte and schema id.
        header: [u8; 5],
    }

    impl Orders {
        /// Registers the schema under `<topic>-value`.
        pub fn register(url: &str, topic: &str) -> anyhow::Result<Orders> {
            let body = serde_json::json!({ "schema": SCHEMA }).to_string();
            let mut response = ureq::post(&format!(
                "{}/subjects/{topic}-value/versions",
                url.trim_end_matches('/')
            ))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .send(body)
            .context("registering the Avro schema")?;
            let answer: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
            let id = answer["id"].as_u64().context("the registry answered no id")? as u32;
            let mut header = [0u8; 5];
            header[1..].copy_from_slice(&id.to_be_bytes());
            Ok(Orders {
                schema: Schema::parse_str(SCHEMA)?,
                header,
            })
        }

        /// One order event (as `order_event` makes it) in the wire format.
        pub fn encode(&self, event: &serde_json::Value) -> anyhow::Result<Vec<u8>> {
            let decimal = |v: &serde_json::Value| {
                let cents: i64 = v.as_str().unwrap_or("0").replace('.', "").parse().unwrap_or(0);
                Value::Decimal(Decimal::from(num_bigint::BigInt::from(cents).to_signed_bytes_be()))
            };
            let ts = chrono::DateTime::parse_from_rfc3339(event["ts"].as_str().unwrap_or_default())?.timestamp_millis();
            let items = event["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    Value::Record(vec![
                        (
                            "sku".into(),
                            Value::String(i["sku"].as_str().unwrap_or_default().to_owned()),
                        ),
                        ("qty".into(), Value::Long(i["qty"].as_i64().unwrap_or(0))),
                        ("unit_price".into(), decimal(&i["unit_price"])),
                    ])
                })
                .collect();
            let value = Value::Record(vec![
                ("id".into(), Value::Long(event["id"].as_i64().unwrap_or(0))),
                (
                    "customer".into(),
                    Value::Record(vec![(
                        "name".into(),
                        Value::String(event["customer"]["name"].as_str().unwrap_or_default().to_owned()),
                    )]),
                ),
                ("amount".into(), decimal(&event["amount"])),
                ("ts".into(), Value::TimestampMillis(ts)),
                ("items".into(), Value::Array(items)),
            ]);
            let mut out = self.header.to_vec();
            out.extend(apache_avro::to_avro_datum(&self.schema, value)?);
            Ok(out)
        }
    }
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Corpus {
    /// Sample order events (see above).
    Orders,
    /// The good events of the poison corpus.
    Strict,
    /// The poison corpus: the strict events with 1 % bad records.
    Poison,
}

/// Produce sample JSON order events to a Kafka topic.
#[derive(Debug, Parser)]
#[command(name = "produce")]
struct Args {
    /// Bootstrap brokers, host:port[,host:port...].
    #[arg(long, env = "SLUICE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,

    /// Topic to produce to.
    #[arg(long, default_value = "orders")]
    topic: String,

    /// Partitions to create the topic with (when it does not exist yet).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,

    /// Replication factor to create the topic with.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    replication_factor: i32,

    /// Number of events to produce (0 only makes sure the topic exists).
    #[arg(long, default_value_t = 1000)]
    count: u64,

    /// Id of the first event; events get ids start-id, start-id + 1, ...
    #[arg(long, default_value_t = 1)]
    start_id: u64,

    /// Cycle ids over this many keys (start-id .. start-id + keys), so
    /// that later events update earlier ones (upsert loads); 0 = every id
    /// distinct. The Kafka key is the id, so a key stays in one partition.
    #[arg(long, default_value_t = 0)]
    keys: u64,

    /// What to produce: order events, or the dead-letter tests' corpus.
    #[arg(long, value_enum, default_value_t = Corpus::Orders)]
    corpus: Corpus,

    /// Print the CREATE TABLE statement of the corpus' strict table under
    /// this name, and exit.
    #[arg(long, value_name = "TABLE")]
    print_ddl: Option<String>,

    /// Print the strict table's `[pipelines.columns]` mapping, and exit.
    #[arg(long)]
    print_columns: bool,

    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,

    /// Extra librdkafka producer property, e.g. -X security.protocol=ssl (repeatable).
    #[arg(short = 'X', long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,

    /// Seconds to wait for outstanding deliveries at the end.
    #[arg(long, default_value_t = 60)]
    flush_timeout: u64,

    /// Write the order events as Avro in the Confluent wire format instead
    /// of JSON, their schema registered under `<topic>-value` at this
    /// Schema Registry URL (amount and prices as decimal(12,2), ts as
    /// timestamp-millis).
    #[arg(long, value_name = "URL")]
    avro_registry: Option<String>,
}

/// Counts delivery reports; called from `BaseProducer::poll` on this thread.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    per_partition: Mutex<BTreeMap<i32, u64>>,
    first_error: Mutex<Option<String>>,
}

impl Deliveries {
    fn record_failure(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(error);
        }
    }
}

impl ClientContext for Deliveries {
    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("produce: kafka: {error}: {reason}");
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                *self
                    .per_partition
                    .lock()
                    .unwrap()
                    .entry(message.partition())
                    .or_default() += 1;
            }
            Err((error, _)) => self.record_failure(error.to_string()),
        }
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("produce: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every event was delivered.
fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(table) = &args.print_ddl {
        println!("{}", poison_corpus::strict_table_ddl(table));
        return Ok(true);
    }
    if args.print_columns {
        println!("{}", poison_corpus::COLUMNS.trim());
        return Ok(true);
    }
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &args.brokers);
    for property in &args.properties {
        let Some((key, value)) = property.split_once('=') else {
            bail!("-X {property}: expected KEY=VALUE");
        };
        config.set(key.trim(), value.trim());
    }

    ensure_topic(&config, &args)?;

    let mut producer_config = config.clone();
    // Batch for throughput (~100k msg/s against a local broker) while keeping
    // latency low; idempotence so that internal retries cannot duplicate or
    // reorder events. -X properties win, also when given under an alias name.
    let defaults: [(&[&str], &str); 9] = [
        (&["enable.idempotence"], "true"),
        // The poison corpus holds 5 MB records.
        (&["message.max.bytes"], "8388608"),
        (&["queue.buffering.max.ms", "linger.ms"], "5"),
        (&["batch.num.messages"], "10000"),
        (&["batch.size"], "1000000"),
        (&["queue.buffering.max.messages"], "200000"),
        (&["queue.buffering.max.kbytes"], "262144"),
        (&["acks", "request.required.acks"], "all"),
        (&["message.timeout.ms", "delivery.timeout.ms"], "60000"),
    ];
    for (names, value) in defaults {
        if names.iter().all(|name| config.get(name).is_none()) {
            producer_config.set(names[0], value);
        }
    }
    let producer: BaseProducer<Deliveries> = producer_config
        .create_with_context(Deliveries::default())
        .context("creating the Kafka producer")?;

    let partitions = topic_partitions(&producer, &args.topic)?;
    if partitions != args.partitions {
        eprintln!(
            "produce: note: topic {} already has {partitions} partitions (--partitions {} applies only when creating it)",
            args.topic, args.partitions
        );
    }

    if args.count == 0 {
        println!(
            "produce: topic {} is ready ({partitions} partitions); nothing to produce",
            args.topic
        );
        return Ok(true);
    }

    // The corpus records, when producing one; else order events made on the fly.
    let records: Option<Vec<Vec<u8>>> = match args.corpus {
        Corpus::Orders => None,
        Corpus::Strict => Some((0..args.count).map(poison_corpus::good).collect()),
        Corpus::Poison => Some(poison_corpus::corpus(args.count, partitions as u64).0),
    };
    let total = records.as_ref().map_or(args.count, |r| r.len() as u64);
    let avro = match (&args.avro_registry, args.corpus) {
        (Some(url), Corpus::Orders) => Some(avro::Orders::register(url, &args.topic)?),
        (Some(_), _) => bail!("--avro-registry writes order events only"),
        (None, _) => None,
    };

    let started = Instant::now();
    let mut last_progress = started;
    let mut rng = rand::rng();
    let mut enqueue_failed = 0u64;
    for n in 0..total {
        if args.rate > 0 {
            // Pace against the start time (no drift). Sleep rather than poll with
            // a timeout: librdkafka timeouts are whole milliseconds, so sub-ms
            // waits would spin.
            let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            let now = Instant::now();
            if due > now {
                producer.poll(Duration::ZERO);
                thread::sleep(due - now);
            }
        }

        let (key, payload, partition) = match &records {
            None => {
                let id = args.start_id + if args.keys > 0 { n % args.keys } else { n };
                let event = order_event(id, &mut rng);
                let payload = match &avro {
                    Some(avro) => avro.encode(&event)?,
                    None => serde_json::to_vec(&event)?,
                };
                (id.to_string(), payload, None)
            }
            Some(records) => (
                n.to_string(),
                records[n as usize].clone(),
                Some((n % partitions as u64) as i32),
            ),
        };
        loop {
            let mut record = BaseRecord::<_, _, ()>::to(&args.topic).key(&key).payload(&payload);
            record.partition = partition;
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // librdkafka's queue is full: serve delivery reports, then retry.
                    producer.poll(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    enqueue_failed += 1;
                    producer.context().record_failure(error.to_string());
                    break;
                }
            }
        }
        if n % 512 == 0 {
            producer.poll(Duration::ZERO);
            if last_progress.elapsed() >= Duration::from_secs(2) {
                last_progress = Instant::now();
                eprintln!(
                    "produce: {} sent, {} delivered",
                    n + 1,
                    producer.context().delivered.load(Ordering::Relaxed)
                );
            }
        }
    }

    let mut not_flushed = 0u64;
    if let Err(error) = producer.flush(Duration::from_secs(args.flush_timeout)) {
        not_flushed = u64::try_from(producer.in_flight_count()).unwrap_or(0);
        eprintln!("produce: flush: {error}; {not_flushed} messages still undelivered");
    }
    let elapsed = started.elapsed();

    let deliveries = producer.context();
    let delivered = deliveries.delivered.load(Ordering::Relaxed);
    let failed = deliveries.failed.load(Ordering::Relaxed) + not_flushed;
    let per_partition = deliveries.per_partition.lock().unwrap().clone();
    let per_partition = per_partition
        .iter()
        .map(|(partition, count)| format!("p{partition}={count}"))
        .collect::<Vec<_>>()
        .join(" ");
    let rate = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    let what = match args.corpus {
        Corpus::Orders => format!(
            "ids {}..={}",
            args.start_id,
            (args.start_id + args.count).saturating_sub(1)
        ),
        Corpus::Strict => format!("{} strict events", args.count),
        Corpus::Poison => format!("{} strict events, {} poison", args.count, total - args.count),
    };
    println!(
        "produce: delivered {delivered} of {total} events to {} ({what}) in {:.2}s, {rate:.0} msg/s [{per_partition}]",
        args.topic,
        elapsed.as_secs_f64(),
    );
    if failed > 0 {
        let first = deliveries.first_error.lock().unwrap().clone();
        eprintln!(
            "produce: error: {failed} events not delivered ({enqueue_failed} rejected when enqueued); first error: {}",
            first.as_deref().unwrap_or("delivery timed out")
        );
        return Ok(false);
    }
    Ok(true)
}

/// Creates the topic unless it already exists.
fn ensure_topic(config: &ClientConfig, args: &Args) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().context("creating the Kafka admin client")?;
    let topic = NewTopic::new(
        &args.topic,
        args.partitions,
        TopicReplication::Fixed(args.replication_factor),
    );
    // Fail within seconds rather than librdkafka's default minute when no broker answers.
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(15)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = block_on(admin.create_topics([&topic], &options)).with_context(|| {
        format!(
            "creating topic {} (is a Kafka broker reachable at {}?)",
            args.topic, args.brokers
        )
    })?;
    for result in results {
        match result {
            Ok(name) => eprintln!("produce: created topic {name} with {} partitions", args.partitions),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The topic's partition count, waiting briefly for a just-created topic to show up.
fn topic_partitions(producer: &BaseProducer<Deliveries>, topic: &str) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .context("fetching topic metadata")?;
        if let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len() as i32);
            }
            if Instant::now() >= deadline {
                bail!("topic {topic} has no usable metadata (error: {:?})", t.error());
            }
        } else if Instant::now() >= deadline {
            bail!("topic {topic} does not show up in the broker's metadata");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// One order event with 1-3 line items; `amount` is their total.
fn order_event(id: u64, rng: &mut impl Rng) -> serde_json::Value {
    let item_count = rng.random_range(1..=3);
    let mut total_cents = 0u64;
    let items: Vec<_> = (0..item_count)
        .map(|_| {
            let qty = rng.random_range(1..=5u64);
            let unit_cents = rng.random_range(99..=49_999u64);
            total_cents += qty * unit_cents;
            json!({
                "sku": format!("SKU-{:04}", rng.random_range(0..1000)),
                "qty": qty,
                "unit_price": cents(unit_cents),
            })
        })
        .collect();
    json!({
        "id": id,
        "customer": { "name": format!("customer-{}", id % 97) },
        "amount": cents(total_cents),
        "ts": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        "items": items,
    })
}

fn cents(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// Minimal executor for the admin client's one future (rdkafka completes it
/// from its own thread), so the example needs no async runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}
