//! `mode = "upsert"` end to end: one row per key, the highest offset wins,
//! tombstones delete, and a SIGKILL mid-load changes nothing of that.

use std::time::Duration;

use rand::Rng;
use sqlx::PgPool;

use crate::harness::*;

const UPDATES: u64 = 100_000;
const KEYS: u64 = 1_000;
const PARTITIONS: i32 = 3;
/// Keys `0..DELETED` get a tombstone after the updates.
const DELETED: u64 = 100;
/// Keys `DELETED..REVIVED` get a tombstone, then one more update: they exist.
const REVIVED: u64 = 150;
/// Records: the updates, a tombstone for each key below `REVIVED`, an
/// update for each key in `DELETED..REVIVED`.
const TOTAL: u64 = UPDATES + REVIVED + (REVIVED - DELETED);

const COLUMNS: &str = r#"id = "/id"
v = "/v"
kafka_offset = "@offset""#;

/// Record `i` of the load: its key, value (`None`: tombstone) and partition.
/// A key always goes to the same partition, as Kafka's partitioner does.
fn record(i: u64) -> (String, Option<String>, i32) {
    let (k, value) = if i < UPDATES {
        let k = i % KEYS;
        (k, Some(format!(r#"{{"id": {k}, "v": {i}}}"#)))
    } else if i < UPDATES + REVIVED {
        (i - UPDATES, None)
    } else {
        let k = DELETED + (i - UPDATES - REVIVED);
        (k, Some(format!(r#"{{"id": {k}, "v": {i}}}"#)))
    };
    (k.to_string(), value, (k % PARTITIONS as u64) as i32)
}

/// The one row each surviving key must end with: the value of its
/// highest-offset record.
fn expected() -> Vec<(i64, i64)> {
    let mut last = std::collections::BTreeMap::new();
    for i in 0..TOTAL {
        let (key, value, _) = record(i);
        let k: i64 = key.parse().unwrap();
        match value {
            Some(_) => last.insert(k, i as i64),
            None => last.remove(&k),
        };
    }
    last.into_iter().collect()
}

async fn create_table(pool: &PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint NOT NULL, kafka_offset bigint)"
    ))
    .execute(pool)
    .await
    .expect("create table");
}

async fn rows(pool: &PgPool, table: &str) -> Vec<(i64, i64)> {
    sqlx::query_as(&format!("SELECT id, v FROM {table} ORDER BY id"))
        .fetch_all(pool)
        .await
        .expect("rows")
}

/// How many records the stored offsets cover.
async fn covered(pool: &PgPool, group: &str, topic: &str) -> i64 {
    stored_offsets(pool, group, topic).await.iter().map(|(_, o)| *o).sum()
}

fn upsert_config(services: &Services, group: &str, topic: &str, table: &str, extra: &str) -> String {
    config(
        services,
        group,
        topic,
        table,
        COLUMNS,
        &format!("mode = \"upsert\"\nkey = [\"id\"]\n{extra}"),
    )
}

/// Waits until every record is covered, then checks the table holds
/// exactly the expected rows.
async fn assert_converged(pool: &PgPool, group: &str, topic: &str, table: &str, log: impl Fn() -> String) {
    let done = eventually(Duration::from_secs(180), || async {
        covered(pool, group, topic).await >= TOTAL as i64
    })
    .await;
    assert!(
        done,
        "stored offsets cover {} of {TOTAL}; log:\n{}",
        covered(pool, group, topic).await,
        log()
    );
    assert_eq!(covered(pool, group, topic).await, TOTAL as i64);
    let want = expected();
    assert_eq!(want.len() as u64, KEYS - DELETED, "the test's own arithmetic");
    let got = rows(pool, table).await;
    assert_eq!(got.len(), want.len(), "one row per surviving key");
    let wrong: Vec<_> = got.iter().zip(&want).filter(|(g, w)| g != w).take(5).collect();
    assert!(wrong.is_empty(), "(got, want) rows that differ: {wrong:?}");
    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM sluice.dead_letters WHERE topic = $1")
        .bind(topic)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(letters, 0, "no tombstone or update was dead-lettered");
}

/// 100,000 updates over 1,000 keys → 1,000 rows, each with its last value;
/// then tombstones delete 150 keys, 50 of which are updated again after.
#[tokio::test(flavor = "multi_thread")]
async fn last_offset_per_key_wins_and_tombstones_delete() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("ups"), unique("g"), unique("kv"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce_records(&brokers, &t, 0..UPDATES, 0, record))
        .await
        .unwrap();

    let sluice = Sluice::start(&upsert_config(&services, &group, &topic, &table, ""));
    let updated = eventually(Duration::from_secs(120), || async {
        covered(&pool, &group, &topic).await >= UPDATES as i64
    })
    .await;
    assert!(updated, "log:\n{}", sluice.log_text());
    let got = rows(&pool, &table).await;
    assert_eq!(got.len() as u64, KEYS, "exactly one row per key");
    for (id, v) in &got {
        // Key k's updates are i = k, k + 1000, ...: the last is 99,000 + k.
        assert_eq!(
            *v,
            (UPDATES - KEYS) as i64 + id,
            "key {id} holds its highest offset's value"
        );
    }

    let brokers = services.brokers.clone();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce_records(&brokers, &t, UPDATES..TOTAL, 0, record))
        .await
        .unwrap();
    assert_converged(&pool, &group, &topic, &table, || sluice.log_text()).await;
    let log = sluice.log_text();
    assert!(!log.contains("ERROR"), "no errors:\n{log}");
}

/// The same load, produced slowly, with SIGKILLs landing mid-load and a
/// restart after each: the table still converges to exactly that state.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_load_still_converges() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("upskill"), unique("g"), unique("kv"));
    create_topic(&services.brokers, &topic, PARTITIONS).await;
    create_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    // ~33 s of load: each restart waits out the killed member's session (6 s).
    let producer = tokio::task::spawn_blocking(move || produce_records(&brokers, &t, 0..TOTAL, 3_000, record));

    let mut sluice = Sluice::start(&upsert_config(&services, &group, &topic, &table, "batch_size = 500"));
    let mut kills = 0;
    while kills < 3 {
        let before = covered(&pool, &group, &topic).await;
        assert!(
            before < TOTAL as i64,
            "the load ended before kill {kills}: the test would prove nothing"
        );
        let progressed = eventually(Duration::from_secs(60), || async {
            covered(&pool, &group, &topic).await > before
        })
        .await;
        assert!(
            progressed,
            "no progress after restart {kills}; log:\n{}",
            sluice.log_text()
        );
        let pause = rand::rng().random_range(50..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        sluice.kill9();
        kills += 1;
        sluice = sluice.restart(&format!("sluice-{kills}.log"));
    }
    producer.await.unwrap();
    assert_converged(&pool, &group, &topic, &table, || sluice.log_text()).await;
}

/// Upsert needs a unique index on exactly the key: without one, start-up
/// refuses the pipeline and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_without_a_unique_index_is_refused_at_start() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("upsnokey"), unique("g"), unique("kv"));
    create_topic(&services.brokers, &topic, 1).await;
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint, v bigint, kafka_offset bigint)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mut sluice = Sluice::start(&upsert_config(&services, &group, &topic, &table, ""));
    let status = sluice.wait_timeout(Duration::from_secs(30)).expect("exits");
    assert!(!status.success());
    let log = sluice.log_text();
    assert!(
        log.contains("has no primary key or unique index on exactly (id)") && log.contains("pipelines[0].key"),
        "{log}"
    );
}

/// Rows the target refuses (here NOT NULL, raised by the upsert statement,
/// not by the COPY into the staging table) are isolated and dead-lettered;
/// every other record is applied in order, so a key whose last record is
/// refused keeps its last good value.
#[tokio::test(flavor = "multi_thread")]
async fn refused_rows_are_dead_lettered_and_the_rest_applies_in_order() {
    const N: u64 = 2_000;
    const K: u64 = 100;
    let bad = |i: u64| i % 97 == 5 || i == 1_950;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("upsbad"), unique("g"), unique("kv"));
    create_topic(&services.brokers, &topic, 1).await;
    create_table(&pool, &table).await;
    // A CHECK only Postgres knows (sluice checks NOT NULL itself, before the
    // database): the refusal comes from the upsert statement.
    sqlx::query(&format!("ALTER TABLE {table} ADD CHECK (v >= 0)"))
        .execute(&pool)
        .await
        .unwrap();
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let produce = move |i: u64| {
        let k = i % K;
        let v = if bad(i) { "-1".to_owned() } else { i.to_string() };
        (k.to_string(), Some(format!(r#"{{"id": {k}, "v": {v}}}"#)), 0)
    };
    tokio::task::spawn_blocking(move || produce_records(&brokers, &t, 0..N, 0, produce))
        .await
        .unwrap();

    let sluice = Sluice::start(&upsert_config(&services, &group, &topic, &table, ""));
    let done = eventually(Duration::from_secs(120), || async {
        covered(&pool, &group, &topic).await >= N as i64
    })
    .await;
    assert!(done, "log:\n{}", sluice.log_text());
    let mut want = std::collections::BTreeMap::new();
    for i in (0..N).filter(|i| !bad(*i)) {
        want.insert((i % K) as i64, i as i64);
    }
    let want: Vec<(i64, i64)> = want.into_iter().collect();
    assert_eq!(rows(&pool, &table).await, want);
    assert_eq!(want[50], (50, 1_850), "key 50's last record (1950) was refused");
    let letters: Vec<(i64, String, Option<String>)> = sqlx::query_as(
        "SELECT \"offset\", error_class, sqlstate FROM sluice.dead_letters WHERE topic = $1 ORDER BY \"offset\"",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await
    .unwrap();
    let refused: Vec<i64> = (0..N).filter(|i| bad(*i)).map(|i| i as i64).collect();
    assert_eq!(letters.iter().map(|l| l.0).collect::<Vec<_>>(), refused);
    assert!(
        letters.iter().all(|l| l.1 == "data" && l.2.as_deref() == Some("23514")),
        "{letters:?}"
    );
}

/// `version = "v"`: a row is only replaced by a greater version, within a
/// batch and across batches, whatever the offsets' order; a tombstone still
/// deletes, and a lower version after it inserts again.
#[tokio::test(flavor = "multi_thread")]
async fn with_a_version_column_only_newer_versions_replace_a_row() {
    const N: u64 = 3_000;
    const K: u64 = 100;
    // Distinct versions in a scrambled order (7919 is prime to N).
    let version = |i: u64| (i * 7919) % N + 1;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("upsver"), unique("g"), unique("kv"));
    create_topic(&services.brokers, &topic, 1).await;
    create_table(&pool, &table).await;
    let record = move |i: u64| -> (String, Option<String>, i32) {
        match i {
            // Key 0: a tombstone, then an old version: it is back, with that version.
            i if i == N => ("0".into(), None, 0),
            i if i == N + 1 => ("0".into(), Some(r#"{"id": 0, "v": 1}"#.into()), 0),
            // Key 1: deleted last.
            i if i == N + 2 => ("1".into(), None, 0),
            i => {
                let k = i % K;
                let v = version(i);
                (k.to_string(), Some(format!(r#"{{"id": {k}, "v": {v}}}"#)), 0)
            }
        }
    };
    let sluice = Sluice::start(&upsert_config(&services, &group, &topic, &table, "version = \"v\""));
    // Three loads, each flushed before the next, so versions meet both
    // inside a batch and across batches.
    for range in [0..N / 3, N / 3..2 * N / 3, 2 * N / 3..N + 3] {
        let end = range.end as i64;
        let (brokers, t) = (services.brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || produce_records(&brokers, &t, range, 0, record))
            .await
            .unwrap();
        let done = eventually(Duration::from_secs(90), || async {
            covered(&pool, &group, &topic).await >= end
        })
        .await;
        assert!(done, "log:\n{}", sluice.log_text());
    }
    let mut want = std::collections::BTreeMap::new();
    for i in 0..N {
        let slot = want.entry((i % K) as i64).or_insert(0i64);
        *slot = (*slot).max(version(i) as i64);
    }
    want.insert(0, 1);
    want.remove(&1);
    let want: Vec<(i64, i64)> = want.into_iter().collect();
    assert_eq!(rows(&pool, &table).await, want);
    // Each key ended on a record that was not its last one, often enough
    // for the test to mean something.
    let not_last = (2..K)
        .filter(|k| (0..N).rfind(|i| i % K == *k).map(version) != Some(want[*k as usize - 1].1 as u64))
        .count();
    assert!(not_last > K as usize / 2, "{not_last} keys end on an earlier offset");
}
