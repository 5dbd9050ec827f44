//! A stored offset outside the log on the broker: below its start
//! (retention deleted records sluice never wrote) or above its end (the
//! topic was deleted and re-created). Never moved silently: an ERROR, a
//! count, and by default a stopped pipeline; `kafka.on_offset_out_of_range`
//! can choose to skip to the log's start or end instead.
//!
//! Staged on librdkafka's mock cluster: tansu answers a fetch above the log
//! end with an empty response instead of OFFSET_OUT_OF_RANGE (the partition
//! just waits), and has neither DeleteRecords nor retention to put a stored
//! offset below the log start. The mock broker answers both as Kafka does;
//! its partitions keep at most 5 MiB of record batches, dropping the oldest
//! first, which is the retention the below-the-start case uses.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use sqlx::PgPool;

use crate::harness::*;

const COLUMNS: &str = "id = \"/id\"\nkafka_partition = \"@partition\"\nkafka_offset = \"@offset\"";

async fn create_table(pool: &PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint, kafka_partition int, kafka_offset bigint)"
    ))
    .execute(pool)
    .await
    .expect("create table");
}

/// Stores `next_offset` for partition 0 of `topic`, as an earlier run would have.
async fn store_offset(pool: &PgPool, group: &str, topic: &str, next_offset: i64) {
    sluice::app::migrate(pool).await.expect("migrate");
    sqlx::query("INSERT INTO sluice.offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, 0, $3)")
        .bind(group)
        .bind(topic)
        .bind(next_offset)
        .execute(pool)
        .await
        .expect("store offset");
}

/// Produces records `range` to partition 0 of `topic`, each value `{"id":i}`
/// padded with `pad` bytes.
async fn produce_padded(brokers: &str, topic: &str, range: std::ops::Range<u64>, pad: usize) {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        produce_records(&brokers, &topic, range, 0, |i| {
            let value = format!(r#"{{"id":{i},"pad":"{}"}}"#, "x".repeat(pad));
            (i.to_string(), Some(value), 0)
        })
    })
    .await
    .unwrap();
}

/// The offsets written into `table`, in order.
async fn offsets_in(pool: &PgPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT kafka_offset FROM {table} ORDER BY kafka_offset"))
        .fetch_all(pool)
        .await
        .expect("offsets")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The log lines containing `marker`.
fn lines_with(log: &str, marker: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains(marker)).map(str::to_owned).collect()
}

/// A one-pipeline config (`p`: `topic` → `table`) against `brokers`, with
/// `kafka` lines added to the `[kafka]` table.
fn offsets_config(services: &Services, brokers: &str, group: &str, topic: &str, table: &str, kafka: &str) -> String {
    let mock = Services {
        brokers: brokers.to_owned(),
        database_url: services.database_url.clone(),
    };
    config(&mock, group, topic, table, COLUMNS, "").replace(
        "session_timeout = \"6s\"\n",
        &format!("session_timeout = \"6s\"\n{kafka}\n"),
    )
}

/// The stored offset is above the log end, as after the topic was deleted
/// and re-created. With the default `on_offset_out_of_range = "stop"` (and
/// `auto_offset_reset = "latest"`, which librdkafka used to apply silently)
/// the pipeline stops: an ERROR names the partition, the stored offset and
/// the log's bounds, the counter says 1, `/readyz` fails, no row is written
/// and the stored offset stays. The other pipeline keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_offset_above_the_log_end_stops_its_pipeline() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (topic, other, group) = (unique("oor_above"), unique("oor_fine"), unique("g"));
    let (table, other_table) = (unique("oor_above"), unique("oor_fine"));
    cluster.create_topic(&topic, 1, 1).expect("topic");
    cluster.create_topic(&other, 1, 1).expect("topic");
    create_table(&pool, &table).await;
    create_table(&pool, &other_table).await;
    produce_padded(&brokers, &topic, 0..10, 0).await;
    produce_padded(&brokers, &other, 0..20, 0).await;
    store_offset(&pool, &group, &topic, 1010).await;
    // Pipeline q reads its topic from the start, whatever auto_offset_reset says.
    store_offset(&pool, &group, &other, 0).await;

    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = format!(
        "{}\n[[pipelines]]\nname = \"q\"\ntopics = [\"{other}\"]\ntable = \"{other_table}\"\n\
         flush_interval = \"100ms\"\n[pipelines.columns]\n{COLUMNS}\n",
        offsets_config(
            &services,
            &brokers,
            &group,
            &topic,
            &table,
            "auto_offset_reset = \"latest\""
        )
    );
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &addr)]);

    let reported = eventually(Duration::from_secs(60), || async {
        sluice.log_text().contains("offset out of range:")
    })
    .await;
    assert!(reported, "no out-of-range ERROR; log:\n{}", sluice.log_text());
    // The other pipeline writes on, also what arrives later; the stopped
    // one writes nothing, before or after.
    produce_padded(&brokers, &topic, 10..15, 0).await;
    produce_padded(&brokers, &other, 20..25, 0).await;
    let other_done = eventually(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group, &other).await == [(0, 25)]
    })
    .await;
    assert!(other_done, "pipeline q stalled; log:\n{}", sluice.log_text());
    assert_eq!(offsets_in(&pool, &other_table).await, (0..25).collect::<Vec<i64>>());
    assert_eq!(count(&pool, &table).await, 0, "nothing past the gap is written");
    assert_eq!(
        stored_offsets(&pool, &group, &topic).await,
        [(0, 1010)],
        "stored offset kept"
    );

    let log = sluice.log_text();
    let errors = lines_with(&log, "offset out of range:");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = &errors[0];
    for field in [
        "ERROR",
        "pipeline=p",
        &format!("topic={topic}"),
        "partition=0",
        "offset=1010",
        "log_start=0",
        "log_end=10",
        "reason=\"above the log end\"",
        "pipeline stopped, operator action needed",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let (status, _) = http_get(&addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "unready while a pipeline is stopped");
    let (_, metrics) = http_get(&addr, "/metrics").await.expect("/metrics answers");
    assert!(
        metrics.contains("sluice_offset_out_of_range_total{pipeline=\"p\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_offset_out_of_range_total{pipeline=\"q\"} 0\n"),
        "{metrics}"
    );
}

/// The stored offset is below the log start: the mock broker dropped the
/// oldest batches (its 5 MiB per partition), as retention would. With
/// `on_offset_out_of_range = "earliest"` sluice logs the ERROR with the
/// number of records lost, moves on to the first retained record and
/// writes exactly the retained ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_offset_below_the_log_start_skips_to_the_start_when_asked() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (topic, group, table) = (unique("oor_below"), unique("g"), unique("oor_below"));
    cluster.create_topic(&topic, 1, 1).expect("topic");
    create_table(&pool, &table).await;
    // 900 kB each: one record per batch, about five batches retained.
    produce_padded(&brokers, &topic, 0..8, 900_000).await;
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("client");
    let (low, high) = client
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(high, 8);
    assert!(low > 1, "the mock broker kept every record (low watermark {low})");
    store_offset(&pool, &group, &topic, 1).await;

    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = offsets_config(
        &services,
        &brokers,
        &group,
        &topic,
        &table,
        "on_offset_out_of_range = \"earliest\"",
    );
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &addr)]);
    let done = eventually(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group, &topic).await == [(0, 8)]
    })
    .await;
    assert!(done, "stored offsets never reached 8; log:\n{}", sluice.log_text());
    assert_eq!(offsets_in(&pool, &table).await, (low..8).collect::<Vec<i64>>());

    let log = sluice.log_text();
    let errors = lines_with(&log, "offset out of range:");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = &errors[0];
    for field in [
        "ERROR".to_owned(),
        "offset=1".to_owned(),
        format!("log_start={low}"),
        "log_end=8".to_owned(),
        "reason=\"below the log start\"".to_owned(),
        format!("reset_to={low}"),
        format!("skipped={}", low - 1),
        "records skipped".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} missing: {line}");
    }
    let (status, _) = http_get(&addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(status, 200, "a skip does not stop the pipeline");
    let (_, metrics) = http_get(&addr, "/metrics").await.expect("/metrics answers");
    assert!(
        metrics.contains("sluice_offset_out_of_range_total{pipeline=\"p\"} 1\n"),
        "{metrics}"
    );
}

/// Above the log end with `on_offset_out_of_range = "latest"`: the ten
/// records the re-created topic holds are skipped (and counted in the
/// ERROR), the stored offset moves to the end, and exactly the records
/// produced afterwards are written.
#[tokio::test(flavor = "multi_thread")]
async fn a_stored_offset_above_the_log_end_skips_to_the_end_when_asked() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let (topic, group, table) = (unique("oor_latest"), unique("g"), unique("oor_latest"));
    cluster.create_topic(&topic, 1, 1).expect("topic");
    create_table(&pool, &table).await;
    produce_padded(&brokers, &topic, 0..10, 0).await;
    store_offset(&pool, &group, &topic, 1010).await;

    let cfg = offsets_config(
        &services,
        &brokers,
        &group,
        &topic,
        &table,
        "on_offset_out_of_range = \"latest\"",
    );
    let sluice = Sluice::start(&cfg);
    let moved = eventually(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group, &topic).await == [(0, 10)]
    })
    .await;
    assert!(
        moved,
        "the stored offset never moved to the end; log:\n{}",
        sluice.log_text()
    );
    produce_padded(&brokers, &topic, 10..15, 0).await;
    let done = eventually(Duration::from_secs(60), || async {
        stored_offsets(&pool, &group, &topic).await == [(0, 15)]
    })
    .await;
    assert!(done, "stored offsets never reached 15; log:\n{}", sluice.log_text());
    assert_eq!(offsets_in(&pool, &table).await, (10..15).collect::<Vec<i64>>());

    let log = sluice.log_text();
    let errors = lines_with(&log, "offset out of range:");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = &errors[0];
    for field in [
        "ERROR",
        "offset=1010",
        "log_start=0",
        "log_end=10",
        "reason=\"above the log end\"",
        "reset_to=10",
        "skipped=10",
        "records skipped",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}
