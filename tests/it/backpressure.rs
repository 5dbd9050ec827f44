//! Backpressure under overload against the real services: the table is
//! stalled (an ACCESS EXCLUSIVE lock held by another session) while
//! producers run flat out.

use std::time::{Duration, Instant};

use crate::harness::*;

const MIB: u64 = 1024 * 1024;

/// 500,000 events into a stalled table with a 32 MiB buffer budget: the
/// partitions pause, peak RSS stays under the documented bound, nothing is
/// lost, and after the table is released everything lands exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn overload_pauses_stays_within_the_memory_bound_and_lands_exactly_once() {
    const EVENTS: u64 = 500_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("overload"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    let lock = TableLock::take(&pool, &table).await;

    // Budget: 32 MiB of buffer, 4 MiB batches, 8 MiB of librdkafka prefetch.
    let extra = r#"max_buffer_bytes = "32MiB"
max_buffer_records = 10000000
batch_bytes = "4MiB"
batch_size = 20000"#;
    let cfg = config(&services, &group, &topic, &table, ORDER_COLUMNS, extra).replace(
        "session_timeout = \"6s\"",
        "session_timeout = \"6s\"\nprefetch_bytes = \"8MiB\"",
    );
    let sluice = Sluice::start(&cfg);
    let pid = sluice.child.id();

    let brokers = services.brokers.clone();
    let t = topic.clone();
    let started = Instant::now();
    let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, 0..EVENTS, 0, order_payload))
        .await
        .unwrap();
    let produced_in = started.elapsed();

    let paused = eventually(Duration::from_secs(60), || async {
        sluice.log_text().contains("partitions paused")
    })
    .await;
    assert!(
        paused,
        "partitions paused while the table is stalled:\n{}",
        sluice.log_text()
    );
    // Let the paused consumer sit under the full load for a while (pacing:
    // the stall itself is what is measured).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&pool, &table).await, 0, "nothing lands while the table is locked");
    let stalled_rss = peak_rss(pid);

    let released = Instant::now();
    lock.release().await;
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(180), || {
        sluice.log_text()
    })
    .await;
    let drain = released.elapsed();
    assert_exactly_once(&pool, &table, 3, EVENTS).await;
    let peak = peak_rss(pid);

    // The README's bound: 64 MiB + Σ(max_buffer_bytes + writers × (5 ×
    // batch_bytes + 3 × M)) + 2 × brokers × prefetch_bytes, with the
    // default 2 writers, one broker, M = 1 MiB: 64 + (32 + 2 × 23) + 16 MiB.
    let bound = 64 * MIB + (32 + 2 * (5 * 4 + 3)) * MIB + 2 * 8 * MIB;
    eprintln!(
        "overload: produced {EVENTS} in {produced_in:?}; peak RSS while stalled {:.1} MiB, overall {:.1} MiB \
         (bound {:.0} MiB); drained in {drain:?} ({:.0} rows/s)",
        stalled_rss as f64 / MIB as f64,
        peak as f64 / MIB as f64,
        bound as f64 / MIB as f64,
        EVENTS as f64 / drain.as_secs_f64()
    );
    assert!(peak < bound, "peak RSS {peak} over the documented bound {bound}");
    let log = sluice.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("backpressure state changed") && l.contains(r#"to="CRITICAL""#)),
        "the pipeline went CRITICAL:\n{log}"
    );
}

fn two_pipelines(services: &Services, group: &str, topics: [&str; 2], tables: [&str; 2]) -> String {
    let columns = ORDER_COLUMNS;
    format!(
        r#"
shutdown_timeout = "10s"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
session_timeout = "6s"
[postgres]
url = "{url}"

[[pipelines]]
name = "stalled"
topics = ["{t0}"]
table = "{tab0}"
max_buffer_records = 20000
[pipelines.columns]
{columns}

[[pipelines]]
name = "flowing"
topics = ["{t1}"]
table = "{tab1}"
max_buffer_records = 20000
[pipelines.columns]
{columns}
"#,
        brokers = services.brokers,
        url = services.database_url,
        t0 = topics[0],
        t1 = topics[1],
        tab0 = tables[0],
        tab1 = tables[1],
    )
}

/// Two pipelines, one stalled: the other keeps its throughput.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_pipeline_pauses_only_its_own_partitions() {
    const EVENTS: u64 = 100_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let group = unique("g");
    let (ta, tb) = (unique("stalled"), unique("flowing"));
    let (a, b) = (unique("stalled"), unique("flowing"));
    create_topic(&services.brokers, &ta, 3).await;
    create_topic(&services.brokers, &tb, 3).await;
    create_orders_table(&pool, &a).await;
    create_orders_table(&pool, &b).await;
    let sluice = Sluice::start(&two_pipelines(&services, &group, [&ta, &tb], [&a, &b]));

    // Baseline: both flowing. Produce to both, time pipeline B. Returns
    // both topics' end offsets.
    let produce_both = |range: std::ops::Range<u64>| {
        let (brokers, ta, tb) = (services.brokers.clone(), ta.clone(), tb.clone());
        tokio::task::spawn_blocking(move || {
            let r2 = range.clone();
            let b2 = brokers.clone();
            let h = std::thread::spawn(move || produce(&b2, &ta, 3, r2, 0, order_payload));
            let ends_b = produce(&brokers, &tb, 3, range, 0, order_payload);
            (h.join().unwrap(), ends_b)
        })
    };
    // Wait for the assignment before timing anything.
    assert!(
        eventually(Duration::from_secs(60), || async {
            sluice.log_text().contains("partitions assigned")
        })
        .await
    );
    let t0 = Instant::now();
    let (ends_a, ends_b) = produce_both(0..EVENTS).await.unwrap();
    await_stored_offsets(&pool, &group, &tb, &ends_b, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    let normal = t0.elapsed();
    await_stored_offsets(&pool, &group, &ta, &ends_a, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    assert_exactly_once(&pool, &a, 3, EVENTS).await;

    // Now stall A and do it again.
    let lock = TableLock::take(&pool, &a).await;
    let t1 = Instant::now();
    let (ends_a, ends_b) = produce_both(EVENTS..2 * EVENTS).await.unwrap();
    await_stored_offsets(&pool, &group, &tb, &ends_b, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    let stalled = t1.elapsed();
    let log = sluice.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("partitions paused") && l.contains("pipeline=stalled partitions=3")),
        "the stalled pipeline paused its three partitions:\n{log}"
    );
    // (The flowing pipeline may pause too, briefly: that is ordinary
    // backpressure against its own writer, and its throughput shows it.)
    assert_eq!(
        count(&pool, &a).await,
        EVENTS as i64,
        "nothing more lands in the stalled table"
    );
    eprintln!(
        "isolation: flowing pipeline took {normal:?} for {EVENTS} with both flowing ({:.0}/s), {stalled:?} with the other stalled ({:.0}/s)",
        EVENTS as f64 / normal.as_secs_f64(),
        EVENTS as f64 / stalled.as_secs_f64()
    );
    // Generous: the machine is noisy; a real interference would be a stall, not 30 %.
    assert!(
        stalled < normal * 2 + Duration::from_secs(2),
        "flowing pipeline slowed down: {normal:?} → {stalled:?}"
    );
    lock.release().await;
    for (topic, ends) in [(&ta, &ends_a), (&tb, &ends_b)] {
        await_stored_offsets(&pool, &group, topic, ends, Duration::from_secs(120), || {
            sluice.log_text()
        })
        .await;
    }
    assert_exactly_once(&pool, &a, 3, 2 * EVENTS).await;
    assert_exactly_once(&pool, &b, 3, 2 * EVENTS).await;
}

/// Runs one shedding strategy against a stalled single-partition table:
/// returns (offsets that landed, dropped count from the shutdown totals).
async fn shed(strategy: &str, events: u64, buffer_records: usize) -> (Vec<i64>, u64) {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique(strategy), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    let lock = TableLock::take(&pool, &table).await;
    let extra =
        format!("strategy = \"{strategy}\"\nsample_rate = 10\nmax_buffer_records = {buffer_records}\nbatch_size = 500");
    let mut sluice = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, &extra));
    assert!(
        eventually(Duration::from_secs(60), || async {
            sluice.log_text().contains("partitions assigned")
        })
        .await
    );
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 0..events, 0, order_payload))
        .await
        .unwrap();
    assert_eq!(ends, vec![(0, events as i64)]);
    // Shedding strategies never pause: everything is consumed while stalled.
    let consumed = eventually(Duration::from_secs(30), || async {
        sluice.status_counter("p", "consumed") == Some(events)
    })
    .await;
    assert!(
        consumed,
        "all {events} consumed while stalled: /status says {:?}; log:\n{}",
        sluice.status_counter("p", "consumed"),
        sluice.log_text()
    );
    assert_eq!(count(&pool, &table).await, 0, "nothing landed while stalled");
    lock.release().await;
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(60), || {
        sluice.log_text()
    })
    .await;
    sluice.sigterm();
    assert!(sluice
        .wait_timeout(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    let log = sluice.log_text();
    assert!(
        !log.contains("partitions paused"),
        "shedding strategies don't pause:\n{log}"
    );
    let dropped = log_number(&log, "pipeline totals", "dropped").unwrap_or_else(|| panic!("totals logged:\n{log}"));
    let offsets: Vec<i64> = sqlx::query_scalar(&format!("SELECT kafka_offset FROM {table} ORDER BY 1"))
        .fetch_all(&pool)
        .await
        .unwrap();
    let distinct: std::collections::BTreeSet<i64> = offsets.iter().copied().collect();
    assert_eq!(distinct.len(), offsets.len(), "no duplicates");
    assert_eq!(
        offsets.len() as u64 + dropped,
        events,
        "landed + dropped = produced ({strategy})"
    );
    eprintln!(
        "{strategy}: produced {events}, landed {}, dropped {dropped}",
        offsets.len()
    );
    (offsets, dropped)
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_oldest_keeps_the_newest() {
    let (landed, _) = shed("drop_oldest", 20_000, 2_000).await;
    // The newest records fill the buffer at release time; only the first
    // batch, in flight when the table stalled, is older.
    let newest: Vec<i64> = (18_500..20_000).collect();
    assert!(
        newest.iter().all(|o| landed.binary_search(o).is_ok()),
        "the newest 1,500 all landed"
    );
    let middle = landed.iter().filter(|o| (5_000..15_000).contains(*o)).count();
    assert_eq!(middle, 0, "the middle was evicted");
}

#[tokio::test(flavor = "multi_thread")]
async fn drop_newest_keeps_the_oldest() {
    let (landed, _) = shed("drop_newest", 20_000, 2_000).await;
    let oldest: Vec<i64> = (0..1_500).collect();
    assert!(
        oldest.iter().all(|o| landed.binary_search(o).is_ok()),
        "the oldest 1,500 all landed"
    );
    assert!(landed.iter().all(|o| *o < 3_000), "nothing newer than what fit");
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_keeps_about_one_in_n_while_not_normal() {
    // 2,000 slots, low watermark at 1,000: past that only 1 in 10 is kept,
    // and 10,000 records never fill the buffer.
    let (landed, dropped) = shed("sample", 10_000, 2_000).await;
    let sampled = landed.iter().filter(|o| **o >= 2_000).count() as f64;
    let ratio = sampled / 8_000.0;
    assert!(
        (0.09..=0.11).contains(&ratio),
        "kept {ratio:.3} of the records past the low watermark"
    );
    assert!(dropped > 7_000);
}
