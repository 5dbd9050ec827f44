//! Bad records never stall or vanish: a poison corpus mixed into a real
//! load lands every good row once and every bad record in
//! `sluice.dead_letters` with its reason; `sluice dlq replay` is exactly
//! once even when interrupted; `errors.tolerance = "none"` stops the pipeline.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use sqlx::PgPool;

use crate::harness::*;

#[path = "../../examples/common/poison_corpus.rs"]
pub(crate) mod poison_corpus;
use poison_corpus::{good, Poison, COLUMNS, FIVE_MB};

const GOOD: u64 = 100_000;
const PARTITIONS: i32 = 3;

/// Produces raw values, record `n` to partition `n % partitions`; panics
/// unless every record is acknowledged; returns the partitions' end
/// offsets. Allows values up to 8 MB.
fn produce_bytes(brokers: &str, topic: &str, partitions: i32, values: &[Vec<u8>]) -> Ends {
    let acks = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<CountingContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.max.bytes", "8388608")
        .create_with_context(CountingContext(acks.clone()))
        .expect("producer");
    for (n, value) in values.iter().enumerate() {
        let key = n.to_string();
        let record = BaseRecord::to(topic)
            .key(&key)
            .payload(value)
            .partition(n as i32 % partitions);
        send_retrying(&producer, record);
    }
    producer.flush(Duration::from_secs(120)).expect("producer flush");
    acks.ends(values.len() as u64)
}

/// The strict table of the poison corpus.
async fn create_strict_table(pool: &PgPool, table: &str) {
    sqlx::query(&poison_corpus::strict_table_ddl(table))
        .execute(pool)
        .await
        .expect("create table");
}

/// What the dead letter of each kind of poison must say.
impl Poison {
    /// (error_class, sqlstate, a substring of the error).
    fn expected(self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            Poison::MalformedJson => ("decode", None, "invalid JSON"),
            Poison::TruncatedUtf8 => ("decode", None, "not valid UTF-8"),
            Poison::WrongType => ("decode", None, "column `id` (bigint): expected"),
            Poison::SmallintTooLarge => ("decode", None, "column `qty` (smallint): 70000 is out of range"),
            Poison::NumericTooLarge => ("data", Some("22003"), "numeric field overflow"),
            Poison::NullIntoNotNull => ("data", Some("23502"), "\"name\""),
            Poison::DuplicateKey => ("data", Some("23505"), "duplicate key"),
            Poison::CheckViolation => ("data", Some("23514"), "check constraint"),
            Poison::Huge => ("decode", None, "above max_record_bytes"),
            // An empty value is read either as empty (invalid JSON) or as null.
            Poison::Empty => ("decode", None, "record: "),
            Poison::Garbage => ("decode", None, "not valid UTF-8"),
        }
    }
}

async fn dead_letters(pool: &PgPool, topic: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sluice.dead_letters WHERE topic = $1")
        .bind(topic)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Runs sluice on `values` into a fresh strict table until the stored
/// offsets cover every record; then there must be exactly `rows` rows and
/// `letters` dead letters. Returns (topic, table).
async fn run_corpus(
    services: &Services,
    pool: &PgPool,
    values: Arc<Vec<Vec<u8>>>,
    rows: i64,
    letters: i64,
) -> (String, String) {
    let (topic, group, table) = (unique("poison"), unique("g"), unique("strict"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_strict_table(pool, &table).await;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let total = values.len() as u64;
    let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, PARTITIONS, &values))
        .await
        .unwrap();
    assert_eq!(ends.iter().map(|(_, o)| o).sum::<i64>() as u64, total);
    let sluice = Sluice::start(&config(services, &group, &topic, &table, COLUMNS, ""));
    await_stored_offsets(pool, &group, &topic, &ends, Duration::from_secs(180), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(
        (count(pool, &table).await, dead_letters(pool, &topic).await),
        (rows, letters),
        "(rows, dead letters) once the offsets cover every record"
    );
    for line in sluice
        .log_text()
        .lines()
        .filter(|l| l.contains("records dead-lettered"))
    {
        println!("{line}");
    }
    (topic, table)
}

/// (partition, offset, error_class, sqlstate, error, length(value)).
type StoredLetter = (i32, i64, String, Option<String>, String, Option<i32>);

/// 100,000 good events with 1 % poison of every kind: every good row lands
/// once, every bad record is dead-lettered once with the right reason.
/// (Throughput against a clean run is bench/poison.sh's job, not a test's.)
#[tokio::test(flavor = "multi_thread")]
async fn poison_corpus_lands_every_good_row_and_dead_letters_every_bad_one() {
    let services = Services::from_env();
    let pool = services.pool().await;
    sluice::app::migrate(&pool).await.unwrap();
    let (values, poisons) = poison_corpus::corpus(GOOD, PARTITIONS as u64);
    let total = values.len() as u64;
    let bad = poisons.len() as i64;
    assert_eq!(total, GOOD + bad as u64);
    assert_eq!(bad, 1000, "1 % poison");
    let values = Arc::new(values);

    let (topic, table) = run_corpus(&services, &pool, values.clone(), GOOD as i64, bad).await;

    // Every good row exactly once, with its values.
    let (n, distinct, ids_ok): (i64, i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE name = 'n' || id AND id < {GOOD}) FROM {table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((n, distinct, ids_ok), (GOOD as i64, GOOD as i64, GOOD as i64));

    // Every bad record exactly once, at its coordinates, with its reason.
    let stored: Vec<StoredLetter> = sqlx::query_as(
        "SELECT partition, \"offset\", error_class, sqlstate, error, length(value) FROM sluice.dead_letters \
         WHERE topic = $1 AND pipeline = 'p'",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len() as i64, bad);
    let mut letter_at: Vec<u64> = stored
        .iter()
        .map(|(partition, offset, ..)| *offset as u64 * PARTITIONS as u64 + *partition as u64)
        .collect();
    letter_at.sort();
    let mut poisoned: Vec<u64> = poisons.keys().copied().collect();
    poisoned.sort();
    assert_eq!(
        letter_at, poisoned,
        "each bad record dead-lettered once, and nothing else"
    );
    let mut by_kind: HashMap<Poison, usize> = HashMap::new();
    for (partition, offset, class, sqlstate, error, len) in &stored {
        let n = *offset as u64 * PARTITIONS as u64 + *partition as u64;
        let kind = *poisons
            .get(&n)
            .unwrap_or_else(|| panic!("record {n} dead-lettered but good: {error}"));
        let (want_class, want_state, want_text) = kind.expected();
        assert_eq!(class, want_class, "{kind:?} at {n}: {error}");
        assert_eq!(sqlstate.as_deref(), want_state, "{kind:?} at {n}: {error}");
        assert!(
            error.contains(want_text),
            "{kind:?} at {n}: {error:?} lacks {want_text:?}"
        );
        match kind {
            Poison::Huge => {
                assert_eq!(*len, Some(1024 * 1024), "a 5 MB value is stored truncated to 1MiB");
                let size = values[n as usize].len();
                assert_eq!(size, FIVE_MB + 2, "the 5 MB string plus its closing quote and brace");
                assert_eq!(
                    error,
                    &format!(
                        "record: value is {size} bytes, above max_record_bytes (1048576); \
                         stored truncated to its first 1048576 bytes"
                    )
                );
            }
            Poison::Empty => {}
            _ => assert_eq!(
                *len,
                Some(values[n as usize].len() as i32),
                "{kind:?}: the raw value is stored"
            ),
        }
        *by_kind.entry(kind).or_default() += 1;
    }
    let mut kinds: Vec<_> = by_kind.iter().map(|(k, n)| format!("{k:?}={n}")).collect();
    kinds.sort();
    println!("dead letters by reason: {}", kinds.join(" "));
    let mut want_kinds: HashMap<Poison, usize> = HashMap::new();
    for kind in poisons.values() {
        *want_kinds.entry(*kind).or_default() += 1;
    }
    assert_eq!(by_kind, want_kinds, "dead letters by kind: {kinds:?}");
    assert_eq!(by_kind.len(), 11, "every kind of poison seen: {kinds:?}");
}

fn sluice_cli(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config").arg(config).args(args).env("SLUICE_LOG", "warn");
    cmd
}

/// Rows the database refused are replayed once the table is fixed: each
/// exactly once, with two replays racing, one of them killed midway, and a
/// third run afterwards. A still-bad record stays dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn replay_after_the_fix_lands_each_dead_letter_exactly_once() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("replay"), unique("g"), unique("strict"));
    create_topic(&services.brokers, &topic, 1).await;
    create_strict_table(&pool, &table).await;
    // 400 records: every 4th has a null name (refused: NOT NULL); one is not JSON.
    let values: Vec<Vec<u8>> = (0..400u64)
        .map(|i| match i {
            7 => b"{not json".to_vec(),
            i if i % 4 == 1 => format!(r#"{{"id":{i},"qty":1,"name":null,"score":1}}"#).into_bytes(),
            i => good(i),
        })
        .collect();
    let refused = (0..400u64).filter(|i| i % 4 == 1).count() as i64;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &values))
        .await
        .unwrap();
    assert_eq!(ends, vec![(0, 400)]);
    let sluice = Sluice::start(&replay_config(&services, &group, &topic, &table));
    let pname = pipeline_name(&topic);
    let expected_rows = 400 - refused - 1;
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(
        (count(&pool, &table).await, dead_letters(&pool, &topic).await),
        (expected_rows, refused + 1)
    );
    drop(sluice);

    // Before the fix, a replay writes nothing and reports them.
    let config_path = sluice_config_file(&services, &group, &topic, &table);
    let out = sluice_cli(
        &config_path.1,
        &["dlq", "replay", "--pipeline", &pname, "--class", "data"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("still refused {refused}")), "{text}");
    assert_eq!(count(&pool, &table).await, expected_rows);

    // The fix; then two replays race and one is killed midway.
    sqlx::query(&format!("ALTER TABLE {table} ALTER COLUMN name DROP NOT NULL"))
        .execute(&pool)
        .await
        .unwrap();
    // A is killed as soon as it has replayed something.
    let mut a = sluice_cli(&config_path.1, &["dlq", "replay", "--pipeline", &pname])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let replayed_count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sluice.dead_letters WHERE topic = $1 AND replayed_at IS NOT NULL",
        )
        .bind(&topic)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replayed_count().await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(a.try_wait().unwrap().is_none(), "replay A still running at the kill");
    a.kill().unwrap();
    let status = a.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // A COMMIT the killed process had already sent still completes on the
    // server: wait for the row lock its replay transaction holds (from the
    // marking UPDATE to its end) before counting what A replayed.
    let at_kill = {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM sluice.dead_letters WHERE topic = $1 FOR UPDATE")
            .bind(&topic)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        replayed_count().await
    };
    println!("replay killed after {at_kill} of {refused}");
    assert!(
        0 < at_kill && at_kill < refused,
        "A was killed midway: {at_kill} of {refused} replayed"
    );
    // B and C race over what is left.
    let race = |cfg: std::path::PathBuf, pname: String| {
        std::thread::spawn(move || {
            sluice_cli(&cfg, &["dlq", "replay", "--pipeline", &pname])
                .output()
                .unwrap()
        })
    };
    let (b, c) = (
        race(config_path.1.clone(), pname.clone()),
        race(config_path.1.clone(), pname.clone()),
    );
    let (b, c) = (b.join().unwrap(), c.join().unwrap());
    let replayed_by = |out: &std::process::Output| -> i64 {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("still refused 1"), "{text}");
        let n = text.split("replayed ").nth(1).unwrap().split(',').next().unwrap();
        n.parse().unwrap()
    };
    assert_eq!(
        at_kill + replayed_by(&b) + replayed_by(&c),
        refused,
        "each dead letter replayed by exactly one run"
    );
    // A third run finds nothing left but that one.
    let d = sluice_cli(&config_path.1, &["dlq", "replay", "--pipeline", &pname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&d.stdout);
    assert!(
        text.contains("replayed 0, already replayed 0, still refused 1"),
        "{text}"
    );

    // Every record exactly once in the table, but the not-JSON one.
    let (n, distinct): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(DISTINCT kafka_offset) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((n, distinct), (399, 399));
    let (replayed, pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE replayed_at IS NOT NULL), count(*) FILTER (WHERE replayed_at IS NULL) \
         FROM sluice.dead_letters WHERE topic = $1",
    )
    .bind(&topic)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((replayed, pending), (refused, 1));

    // `list` and `show` find them.
    let out = sluice_cli(
        &config_path.1,
        &["dlq", "list", "--pipeline", &pname, "--class", "decode"],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("{topic}[0]@7")))
        .unwrap_or_else(|| panic!("{text}"));
    let id = line.split('\t').next().unwrap();
    let out = sluice_cli(&config_path.1, &["dlq", "show", id]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("value: \"{not json\""), "{text}");
    assert!(text.contains("invalid JSON"), "{text}");
}

/// A config file for the CLI against the same pipeline (the dir is kept alive by the tuple).
fn sluice_config_file(
    services: &Services,
    group: &str,
    topic: &str,
    table: &str,
) -> (Arc<tempfile::TempDir>, std::path::PathBuf) {
    write_config(&replay_config(services, group, topic, table))
}

/// The test config with a pipeline name of its own: `sluice dlq replay`
/// selects by pipeline, and other tests' pipelines are all called `p`.
fn replay_config(services: &Services, group: &str, topic: &str, table: &str) -> String {
    config(services, group, topic, table, COLUMNS, "").replacen(
        "name = \"p\"",
        &format!("name = \"{}\"", pipeline_name(topic)),
        1,
    )
}

fn pipeline_name(topic: &str) -> String {
    format!("r{}", topic.replace('.', "_"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `errors.tolerance = "none"`: the first bad record stops the pipeline
/// before anything past it commits; readiness fails; an ERROR names it.
#[tokio::test(flavor = "multi_thread")]
async fn tolerance_none_stops_at_the_first_bad_record() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("strict_none"), unique("g"), unique("strict"));
    create_topic(&services.brokers, &topic, 1).await;
    create_strict_table(&pool, &table).await;
    // First batch all good; the second holds a CHECK violation at offset 150.
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let first: Vec<Vec<u8>> = (0..100).map(good).collect();
    tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &first))
        .await
        .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut sluice = Sluice::start_with_env(
        &config(
            &services,
            &group,
            &topic,
            &table,
            COLUMNS,
            "[pipelines.errors]\ntolerance = \"none\"",
        ),
        &[("SLUICE_TELEMETRY__HTTP_ADDR", &addr)],
    );
    await_stored_offsets(&pool, &group, &topic, &[(0, 100)], Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(count(&pool, &table).await, 100);
    let ready = eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { http_status(&addr, "/readyz") == Some(200) }
    })
    .await;
    assert!(ready, "ready before the bad record");
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let second: Vec<Vec<u8>> = (100..200u64)
        .map(|i| {
            if i == 150 {
                format!(r#"{{"id":{i},"qty":1,"name":"x","score":-5}}"#).into_bytes()
            } else {
                good(i)
            }
        })
        .collect();
    tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &second))
        .await
        .unwrap();
    let stopped = eventually(Duration::from_secs(30), || async {
        sluice.log_text().contains("pipeline stopped")
    })
    .await;
    assert!(stopped, "log:\n{}", sluice.log_text());
    let log = sluice.log_text();
    let line = log.lines().find(|l| l.contains("pipeline stopped")).unwrap();
    assert!(
        line.contains("ERROR") && line.contains("offset=150") && line.contains("23514"),
        "{line}"
    );
    let unready = eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { http_status(&addr, "/readyz") == Some(503) }
    })
    .await;
    assert!(unready, "/readyz fails once stopped");
    // Whatever the stopped process ever commits is in once it is dead and
    // no flush of it is in flight: then nothing past the bad record is
    // committed, and nothing was dead-lettered. (Records 100..150 may or
    // may not have had a flush of their own before the bad one arrived.)
    sluice.kill9();
    let stored = settled_offsets(&pool, &group, &topic).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let next = stored[0].1;
    assert!(
        (100..=150).contains(&next),
        "stored offset {next} is past the bad record"
    );
    let (n, distinct, max): (i64, i64, Option<i64>) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT kafka_offset), max(kafka_offset) FROM {table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (n, distinct, max),
        (next, next, Some(next - 1)),
        "rows = offsets 0..{next}"
    );
    assert_eq!(dead_letters(&pool, &topic).await, 0);
}

/// A message read from the dead-letter topic: value, key, headers.
type DlqMessage = (Vec<u8>, Vec<u8>, HashMap<String, String>);

/// `errors.dlq_topic`: every dead letter, from the encoder and from
/// Postgres, also reaches the Kafka topic (at least once) with its raw
/// value, key and the `sluice.*` headers; `sluice.dead_letters` has each
/// exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_also_reach_the_kafka_dlq_topic() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("dlqsrc"), unique("g"), unique("strict"));
    let dlq = unique("dlq");
    create_topic(&services.brokers, &topic, 1).await;
    create_topic(&services.brokers, &dlq, 1).await;
    create_strict_table(&pool, &table).await;
    // 300 records; every 10th is bad: alternately not JSON (decode) and a
    // CHECK violation (refused by Postgres).
    let values: Vec<Vec<u8>> = (0..300u64)
        .map(|i| match i % 20 {
            9 => format!("{{not json {i}").into_bytes(),
            19 => format!(r#"{{"id":{i},"qty":1,"name":"x","score":-{i}}}"#).into_bytes(),
            _ => good(i),
        })
        .collect();
    let bad: HashMap<i64, Vec<u8>> = values
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 9)
        .map(|(i, v)| (i as i64, v.clone()))
        .collect();
    let (brokers, t, v) = (services.brokers.clone(), topic.clone(), values.clone());
    let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &v))
        .await
        .unwrap();
    assert_eq!(ends, vec![(0, 300)]);
    let extra = format!("[pipelines.errors]\ndlq_topic = \"{dlq}\"");
    let sluice = Sluice::start(&config(&services, &group, &topic, &table, COLUMNS, &extra));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(90), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(
        (count(&pool, &table).await, dead_letters(&pool, &topic).await),
        (300 - bad.len() as i64, bad.len() as i64)
    );

    // Read the dead-letter topic from the start.
    let brokers = services.brokers.clone();
    let (t, d) = (topic.clone(), dlq.clone());
    let seen = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("dlqreader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&d, 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut seen: HashMap<i64, DlqMessage> = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < 30 && std::time::Instant::now() < deadline {
            let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let headers: HashMap<String, String> = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                            (h.key.to_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(headers.get("sluice.topic"), Some(&t), "{headers:?}");
            let offset: i64 = headers["sluice.offset"].parse().unwrap();
            let entry = (
                msg.payload().unwrap_or_default().to_vec(),
                msg.key().unwrap_or_default().to_vec(),
                headers,
            );
            seen.insert(offset, entry);
        }
        seen
    })
    .await
    .unwrap();
    let mut offsets: Vec<i64> = seen.keys().copied().collect();
    offsets.sort();
    let mut want: Vec<i64> = bad.keys().copied().collect();
    want.sort();
    assert_eq!(offsets, want, "every dead letter reached the topic, and nothing else");
    for (offset, (value, key, headers)) in &seen {
        assert_eq!(value, &bad[offset], "offset {offset}: the raw value");
        assert_eq!(key, offset.to_string().as_bytes(), "offset {offset}: the raw key");
        assert_eq!(headers["sluice.pipeline"], "p");
        assert_eq!(headers["sluice.partition"], "0");
        if offset % 20 == 9 {
            assert_eq!(headers["sluice.error_class"], "decode", "{headers:?}");
            assert!(headers["sluice.error"].contains("invalid JSON"), "{headers:?}");
        } else {
            assert_eq!(headers["sluice.error_class"], "data", "{headers:?}");
            assert_eq!(headers["sluice.sqlstate"], "23514", "{headers:?}");
            assert!(headers["sluice.error"].contains("check constraint"), "{headers:?}");
        }
    }
}

/// The body of an HTTP GET.
fn http_text(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// A value of `len` bytes, `abc…z` over and over.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Issue 12, defect 2: with `errors.dlq_topic` set, one 1.2 MB record
/// (dead-lettered at intake, above the default `max_record_bytes`) made
/// every flush fail with MessageSizeTooLarge, as a database outage behind
/// the breaker: 0 of 10,000 good rows landed. Now its message is cut to fit
/// and says so, and everything lands: every good row once, the dead letter
/// once in `sluice.dead_letters` and once on the topic, every offset stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_too_large_for_the_dlq_topic_is_cut_to_fit_and_nothing_wedges() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};

    const GOOD_ROWS: u64 = 10_000;
    const HUGE_AT: usize = 5_000;
    const HUGE: usize = 1_200_000;
    const MAX_RECORD_BYTES: usize = 1024 * 1024;
    let services = Services::from_env();
    let pool = services.pool().await;
    sluice::app::migrate(&pool).await.unwrap();
    let (topic, group, table) = (unique("dlqhuge"), unique("g"), unique("strict"));
    let dlq = unique("dlq");
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_topic(&services.brokers, &dlq, 1).await;
    create_strict_table(&pool, &table).await;
    // Record n goes to partition n % 3; the huge one sits in the middle.
    let huge = patterned(HUGE);
    let mut values: Vec<Vec<u8>> = (0..GOOD_ROWS).map(good).collect();
    values.insert(HUGE_AT, huge.clone());
    let mut produced = vec![0i64; PARTITIONS as usize];
    for n in 0..values.len() {
        produced[n % PARTITIONS as usize] += 1;
    }
    let (brokers, t, v) = (services.brokers.clone(), topic.clone(), values);
    tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, PARTITIONS, &v))
        .await
        .unwrap();

    let addr = format!("127.0.0.1:{}", free_port());
    let extra = format!("[pipelines.errors]\ndlq_topic = \"{dlq}\"");
    let mut sluice = Sluice::start_with_env(
        &config(&services, &group, &topic, &table, COLUMNS, &extra),
        &[("SLUICE_TELEMETRY__HTTP_ADDR", &addr)],
    );
    // Done when every produced offset is stored: nothing is left to come.
    let want: Vec<(i32, i64)> = produced.iter().enumerate().map(|(p, n)| (p as i32, *n)).collect();
    let done = eventually(Duration::from_secs(120), || async {
        stored_offsets(&pool, &group, &topic).await == want
    })
    .await;
    assert!(
        done,
        "stored offsets {:?}, want {want:?}; {} rows, {} dead letters; log:\n{}",
        stored_offsets(&pool, &group, &topic).await,
        count(&pool, &table).await,
        dead_letters(&pool, &topic).await,
        sluice.log_text()
    );
    let (n, distinct): (i64, i64) = sqlx::query_as(&format!("SELECT count(*), count(DISTINCT id) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (n, distinct),
        (GOOD_ROWS as i64, GOOD_ROWS as i64),
        "every good row once"
    );

    // The dead letter once, with the value as the store keeps it (its first
    // max_record_bytes) and the real length in its reason.
    let stored: Vec<StoredLetter> = sqlx::query_as(
        "SELECT partition, \"offset\", error_class, sqlstate, error, length(value) FROM sluice.dead_letters \
         WHERE topic = $1",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (partition, offset, class, _, error, len) = &stored[0];
    let (want_partition, want_offset) = (HUGE_AT as i32 % PARTITIONS, (HUGE_AT as i32 / PARTITIONS) as i64);
    assert_eq!((*partition, *offset), (want_partition, want_offset));
    assert_eq!(class, "decode");
    assert!(error.contains(&format!("value is {HUGE} bytes")), "{error}");
    assert_eq!(*len, Some(MAX_RECORD_BYTES as i32));
    let stored_value: Vec<u8> = sqlx::query_scalar("SELECT value FROM sluice.dead_letters WHERE topic = $1")
        .bind(&topic)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        stored_value == huge[..MAX_RECORD_BYTES],
        "the store keeps the first max_record_bytes"
    );

    // No producer failure, and the database breaker never opened.
    let metrics = http_text(&addr, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("sluice_dlq_produce_failures_total{pipeline=\"p\"} 0\n"),
        "{metrics}"
    );
    let log = sluice.log_text();
    assert!(!log.contains("flush failed"), "log:\n{log}");

    // Stop sluice (nothing more reaches the topic), then put a sentinel
    // after its messages: everything before the sentinel is all it produced.
    sluice.sigterm();
    let status = sluice.wait_timeout(Duration::from_secs(30)).expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let brokers = services.brokers.clone();
    let d = dlq.clone();
    tokio::task::spawn_blocking(move || {
        produce_records(&brokers, &d, 0..1, 0, |_| ("sentinel".into(), Some("end".into()), 0))
    })
    .await
    .unwrap();
    let brokers = services.brokers.clone();
    let d = dlq.clone();
    let seen: Vec<DlqMessage> = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", unique("dlqreader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&d, 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            if msg.key() == Some(&b"sentinel"[..]) {
                return seen;
            }
            let headers: HashMap<String, String> = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                            (h.key.to_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key = msg.key().unwrap_or_default().to_vec();
            seen.push((msg.payload().unwrap_or_default().to_vec(), key, headers));
        }
        panic!("no sentinel on {d} within 60s; read {} messages before it", seen.len());
    })
    .await
    .unwrap();
    assert_eq!(seen.len(), 1, "exactly one message on the dead-letter topic");
    let (value, key, headers) = &seen[0];
    assert_eq!(key, HUGE_AT.to_string().as_bytes(), "the raw key");
    assert_eq!(headers["sluice.topic"], topic);
    assert_eq!(headers["sluice.partition"], want_partition.to_string());
    assert_eq!(headers["sluice.offset"], want_offset.to_string());
    assert_eq!(
        headers.get("sluice.truncated").map(String::as_str),
        Some("1048576"),
        "the value's length as dead-lettered: {headers:?}"
    );
    assert!(
        value.len() < 1_000_000,
        "under the producer's message.max.bytes: {}",
        value.len()
    );
    assert!(value.len() > 800_000, "cut only as far as needed: {}", value.len());
    assert!(value[..] == huge[..value.len()], "a prefix of the value");
}

/// Issue 12, defect 2: a dead-letter topic that fails is not a database
/// outage. Here the broker refuses the first 4 produce requests: each flush
/// that meets it is rolled back, logged and counted as a dead-letter topic
/// failure and retried with backoff, the database breaker (threshold 3)
/// never opens, and then everything lands. The broker's refusal is staged
/// with librdkafka's mock cluster (tansu cannot refuse a produce request);
/// Postgres is the real one.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_dlq_topic_is_retried_without_the_database_breaker() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    const FAILURES: usize = 4;
    let services = Services::from_env();
    let pool = services.pool().await;
    sluice::app::migrate(&pool).await.unwrap();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let (topic, group, table, dlq) = (unique("dlqfail"), unique("g"), unique("strict"), unique("dlq"));
    cluster.create_topic(&topic, 1, 1).expect("topic");
    cluster.create_topic(&dlq, 1, 1).expect("dlq topic");
    create_strict_table(&pool, &table).await;
    let values: Vec<Vec<u8>> = (0..100u64)
        .map(|i| if i == 50 { b"{not json".to_vec() } else { good(i) })
        .collect();
    let (brokers, t) = (cluster.bootstrap_servers(), topic.clone());
    tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &values))
        .await
        .unwrap();
    let refused = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; FAILURES];
    cluster.request_errors(RDKafkaApiKey::Produce, &refused);

    let mock = Services {
        brokers: cluster.bootstrap_servers(),
        database_url: services.database_url.clone(),
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let extra = format!("[pipelines.errors]\ndlq_topic = \"{dlq}\"");
    let sluice = Sluice::start_with_env(
        &config(&mock, &group, &topic, &table, COLUMNS, &extra),
        &[("SLUICE_TELEMETRY__HTTP_ADDR", &addr)],
    );
    let done = eventually(Duration::from_secs(90), || async {
        stored_offsets(&pool, &group, &topic).await == [(0, 100)]
    })
    .await;
    assert!(done, "offsets not stored; log:\n{}", sluice.log_text());
    assert_eq!(count(&pool, &table).await, 99);
    assert_eq!(dead_letters(&pool, &topic).await, 1);

    let log = sluice.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("producing dead letters failed"))
        .collect();
    // Each refused request fails a flush; librdkafka may fail one more
    // behind a refusal (measured: 4 or 5 for 4), never fewer. Either way more
    // than the breaker's threshold of 3 in a row.
    let failures = failed.len();
    assert!((FAILURES..=FAILURES + 2).contains(&failures), "log:\n{log}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("WARN") && l.contains(&format!("topic={dlq}"))),
        "{failed:?}"
    );
    assert!(!log.contains("circuit breaker opened"), "log:\n{log}");
    assert!(!log.contains("flush failed"), "log:\n{log}");
    let metrics = http_text(&addr, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains(&format!(
            "sluice_dlq_produce_failures_total{{pipeline=\"p\"}} {failures}\n"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_breaker_state{pipeline=\"p\",state=\"CLOSED\"} 0\n"),
        "{metrics}"
    );
}

/// offset, sqlstate, error, length(value).
type LetterRow = (i64, Option<String>, String, Option<i32>);

/// Rows repeating an earlier row's key in one batch are copied after the
/// others: refused without a COPY when the earlier row landed, and written
/// when it was refused (here by a two-column CHECK only Postgres knows),
/// exactly as Postgres would have decided row by row.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_key_lands_when_the_earlier_row_was_refused() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("repeat"), unique("g"), unique("rep"));
    create_topic(&services.brokers, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, qty int, score int, kafka_offset bigint, CHECK (score <= qty))"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // Offsets: 0 refused (CHECK), 1 repeats 0 and lands, 2 repeats 0 and is
    // refused as a duplicate of 1, 3 lands, 4 repeats 3 and is refused.
    let values: Vec<Vec<u8>> = [
        r#"{"id":1,"qty":1,"score":5}"#,
        r#"{"id":1,"qty":1,"score":0}"#,
        r#"{"id":1,"qty":2,"score":0}"#,
        r#"{"id":2,"qty":1,"score":1}"#,
        r#"{"id":2,"qty":9,"score":9}"#,
    ]
    .iter()
    .map(|v| v.as_bytes().to_vec())
    .collect();
    let (brokers, t, v) = (services.brokers.clone(), topic.clone(), values.clone());
    let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &v))
        .await
        .unwrap();
    assert_eq!(ends, vec![(0, 5)]);
    let columns = "id = \"/id\"\nqty = \"/qty\"\nscore = \"/score\"\nkafka_offset = \"@offset\"";
    let sluice = Sluice::start(&config(&services, &group, &topic, &table, columns, ""));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    let rows: Vec<(i64, i64)> = sqlx::query_as(&format!("SELECT id, kafka_offset FROM {table} ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![(1, 1), (2, 3)]);
    let letters: Vec<LetterRow> = sqlx::query_as(
        "SELECT \"offset\", sqlstate, error, length(value) FROM sluice.dead_letters WHERE topic = $1 ORDER BY \"offset\"",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: Vec<(i64, Option<&str>)> = letters.iter().map(|l| (l.0, l.1.as_deref())).collect();
    assert_eq!(got, vec![(0, Some("23514")), (2, Some("23505")), (4, Some("23505"))]);
    for (offset, _, _, len) in &letters {
        assert_eq!(
            *len,
            Some(values[*offset as usize].len() as i32),
            "raw value stored: {letters:?}"
        );
    }
    assert!(letters[2].2.contains("Key (id)=(2) already exists"), "{}", letters[2].2);
}

/// (offset, error_class, sqlstate, value).
type ForeignKeyLetter = (i64, String, Option<String>, Option<Vec<u8>>);

/// Foreign keys are checked at the end of the COPY statement, so Postgres
/// names no failing line: the writer bisects. 1,000 records, every 97th
/// pointing at a missing parent, into two tables (one with an immediate
/// foreign key, one with a DEFERRABLE INITIALLY DEFERRED one, which the
/// flush makes immediate): every other row lands once, each orphan is a
/// `data` dead letter with SQLSTATE 23503 and its raw value.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_key_violations_are_bisected_to_the_offending_rows() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let parents = unique("parent");
    for statement in [
        format!("CREATE TABLE {parents} (id int PRIMARY KEY)"),
        format!("INSERT INTO {parents} SELECT generate_series(0, 9)"),
    ] {
        sqlx::query(&statement).execute(&pool).await.unwrap();
    }
    let values: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| {
            let parent = if i % 97 == 5 { 1000 + i } else { i % 10 };
            format!(r#"{{"id":{i},"parent":{parent}}}"#).into_bytes()
        })
        .collect();
    let orphans: Vec<i64> = (0..1000i64).filter(|i| i % 97 == 5).collect();
    for deferred in ["", " DEFERRABLE INITIALLY DEFERRED"] {
        let (topic, group, table) = (unique("fk"), unique("g"), unique("child"));
        create_topic(&services.brokers, &topic, 1).await;
        sqlx::query(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, parent int REFERENCES {parents} (id){deferred})"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let (brokers, t, v) = (services.brokers.clone(), topic.clone(), values.clone());
        let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &v))
            .await
            .unwrap();
        assert_eq!(ends, vec![(0, 1000)]);
        let columns = "id = \"/id\"\nparent = \"/parent\"";
        let sluice = Sluice::start(&config(&services, &group, &topic, &table, columns, ""));
        let expected_rows = 1000 - orphans.len() as i64;
        // Offsets covering every record: each one written or dead-lettered.
        await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
            format!("{deferred}: {}", sluice.log_text())
        })
        .await;
        let (n, distinct): (i64, i64) = sqlx::query_as(&format!("SELECT count(*), count(DISTINCT id) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((n, distinct), (expected_rows, expected_rows), "{deferred}");
        let letters: Vec<ForeignKeyLetter> = sqlx::query_as(
            "SELECT \"offset\", error_class, sqlstate, value FROM sluice.dead_letters WHERE topic = $1 ORDER BY 1",
        )
        .bind(&topic)
        .fetch_all(&pool)
        .await
        .unwrap();
        let offsets: Vec<i64> = letters.iter().map(|l| l.0).collect();
        assert_eq!(offsets, orphans, "{deferred}: exactly the orphans");
        for (offset, class, sqlstate, value) in &letters {
            assert_eq!(
                (class.as_str(), sqlstate.as_deref()),
                ("data", Some("23503")),
                "{deferred}"
            );
            assert_eq!(
                value.as_deref(),
                Some(values[*offset as usize].as_slice()),
                "{deferred}: raw value"
            );
        }
    }
}

/// `sluice dlq replay --ids A-B` replays exactly the dead letters in that
/// id range (once the cause is fixed) and leaves the others pending; a
/// second run over the same range replays nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn replay_by_id_range_takes_only_that_range() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("replay_ids"), unique("g"), unique("strict"));
    create_topic(&services.brokers, &topic, 1).await;
    create_strict_table(&pool, &table).await;
    // 100 records; every 10th has a null name (a NOT NULL dead letter).
    let values: Vec<Vec<u8>> = (0..100u64)
        .map(|i| match i {
            i if i % 10 == 3 => format!(r#"{{"id":{i},"qty":1,"name":null,"score":1}}"#).into_bytes(),
            i => good(i),
        })
        .collect();
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    let ends = tokio::task::spawn_blocking(move || produce_bytes(&brokers, &t, 1, &values))
        .await
        .unwrap();
    assert_eq!(ends, vec![(0, 100)]);
    let sluice = Sluice::start(&replay_config(&services, &group, &topic, &table));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(
        (count(&pool, &table).await, dead_letters(&pool, &topic).await),
        (90, 10)
    );
    drop(sluice);
    sqlx::query(&format!("ALTER TABLE {table} ALTER COLUMN name DROP NOT NULL"))
        .execute(&pool)
        .await
        .unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM sluice.dead_letters WHERE topic = $1 ORDER BY id")
        .bind(&topic)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), 10);
    // The 3rd to the 6th of them.
    let range = format!("{}-{}", ids[2], ids[5]);
    let config_path = sluice_config_file(&services, &group, &topic, &table);
    let pname = pipeline_name(&topic);
    for (run, want) in [(1, "replayed 4,"), (2, "replayed 0,")] {
        let out = sluice_cli(
            &config_path.1,
            &["dlq", "replay", "--pipeline", &pname, "--ids", &range],
        )
        .output()
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(want), "run {run}: {text}");
    }
    let replayed: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM sluice.dead_letters WHERE topic = $1 AND replayed_at IS NOT NULL ORDER BY id",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(replayed, ids[2..6].to_vec());
    // Their rows, exactly once: ids 23, 33, 43 and 53 (offsets = ids here).
    let rows: Vec<i64> = sqlx::query_scalar(&format!("SELECT id FROM {table} WHERE name IS NULL ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![23, 33, 43, 53]);
    assert_eq!(count(&pool, &table).await, 94);
}
