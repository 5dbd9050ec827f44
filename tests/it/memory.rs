//! The memory bound in its worst case for dead letters: a backlog whose
//! every row the database refuses, each read back from Kafka for its dead
//! letter (defect 6 of "Lossless means lossless": the read-back records,
//! the statement's copy and the read-back consumer's prefetch were outside
//! the documented bound, and a batch's read-back was not bounded at all).

use std::time::Duration;

use crate::harness::*;

const MIB: u64 = 1024 * 1024;

/// 4,000 records of 16 KiB whose rows (an 8-byte id) all collide with rows
/// already in the table: every row is refused (23505), isolated and
/// dead-lettered with its raw record read back — 64 MiB of raw records
/// behind small batches of rows. Peak RSS stays under the README's bound,
/// and every record is dead-lettered exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_refused_rows_stays_within_the_memory_bound() {
    const EVENTS: u64 = 4_000;
    const PAD: usize = 16 * 1024;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("refused"), unique("g"), unique("taken"));
    create_topic(&services.brokers, &topic, 2).await;
    sqlx::query(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY)"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT g FROM generate_series(0, {}) g",
        EVENTS - 1
    ))
    .execute(&pool)
    .await
    .unwrap();
    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        produce(&brokers, &t, 2, 0..EVENTS, 0, |i| {
            format!(r#"{{"id":{i},"pad":"{}"}}"#, "x".repeat(PAD))
        })
    })
    .await
    .unwrap();

    // Budget: 8 MiB of buffer, 1 MiB batches, 4 MiB of prefetch (its minimum).
    let extra = r#"max_buffer_bytes = "8MiB"
max_record_bytes = "64KiB"
batch_bytes = "1MiB"
batch_size = 2000"#;
    let cfg = config(&services, &group, &topic, &table, r#"id = "/id""#, extra).replace(
        "session_timeout = \"6s\"",
        "session_timeout = \"6s\"\nprefetch_bytes = \"4MiB\"",
    );
    let sluice = Sluice::start(&cfg);
    let pid = sluice.child.id();

    let per_partition = (EVENTS / 2) as i64;
    let done = eventually(Duration::from_secs(240), || async {
        stored_offsets(&pool, &group, &topic).await == vec![(0, per_partition), (1, per_partition)]
    })
    .await;
    assert!(done, "every offset stored; log:\n{}", sluice.log_text());
    let peak = peak_rss(pid);
    let (letters, distinct, with_value): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (partition, \"offset\")), count(*) FILTER (WHERE length(value) > 16384) \
         FROM sluice.dead_letters WHERE topic = $1 AND sqlstate = '23505'",
    )
    .bind(&topic)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (letters, distinct, with_value),
        (EVENTS as i64, EVENTS as i64, EVENTS as i64),
        "every record dead-lettered once, with its raw value read back"
    );
    assert_eq!(count(&pool, &table).await, EVENTS as i64, "no row added");

    // The README's bound, one broker, M = 1 MiB, the default 2 writers:
    // 64 + (max_buffer 8 + 2 × (5 × batch_bytes 1 + 3 × M)) + 2 × prefetch 4 = 96 MiB.
    let bound = 64 * MIB + (8 + 2 * (5 + 3)) * MIB + 2 * 4 * MIB;
    eprintln!(
        "refused backlog: {EVENTS} records of {PAD} bytes, all dead-lettered; peak RSS {:.1} MiB (bound {:.0} MiB)",
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(peak < bound, "peak RSS {peak} over the documented bound {bound}");
}

/// Defect 3 of "Lossless means lossless": an entry costing more than the
/// whole buffer (here the dead letter of a record with 80 KiB of headers,
/// in a 64 KiB buffer) was refused for ever under `block`, wedging its
/// partition. It is stored truncated instead, and everything after it lands.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_larger_than_the_buffer_is_stored_truncated_not_refused_for_ever() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use rdkafka::ClientConfig;

    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("bigletter"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &services.brokers)
        .set("acks", "all")
        .set("message.max.bytes", "4194304")
        .create()
        .expect("producer");
    let header = "h".repeat(8 * 1024);
    for i in 0..100u64 {
        let (key, value) = (
            i.to_string(),
            if i == 50 {
                "not json".to_owned()
            } else {
                order_payload(i)
            },
        );
        let mut record = BaseRecord::<String, String>::to(&topic)
            .key(&key)
            .payload(&value)
            .partition(0);
        if i == 50 {
            let mut headers = OwnedHeaders::new();
            for n in 0..10 {
                headers = headers.insert(Header {
                    key: &format!("h{n}"),
                    value: Some(header.as_str()),
                });
            }
            record = record.headers(headers);
        }
        send_retrying(&producer, record);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let extra = r#"max_buffer_bytes = "64KiB"
max_record_bytes = "16KiB"
batch_bytes = "16KiB"
high_watermark = 1.0"#;
    let sluice = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, extra));
    await_stored_offsets(&pool, &group, &topic, &[(0, 100)], Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    assert_eq!(count(&pool, &table).await, 99, "every good record once");
    let (offset, headers, error): (i64, String, String) =
        sqlx::query_as("SELECT \"offset\", headers::text, error FROM sluice.dead_letters WHERE topic = $1")
            .bind(&topic)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((offset, headers.as_str()), (50, "[]"));
    assert!(
        error.ends_with("(stored truncated to fit the buffer: key 2 bytes, value 8 bytes, headers 82161 bytes)"),
        "{error}"
    );
}
