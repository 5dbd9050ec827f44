//! Exactly-once delivery end to end: a clean run, crashes, a second group
//! member, and graceful shutdown.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::harness::*;

const EVENTS: u64 = 100_000;

/// 3 partitions, 100,000 JSON events → exactly 100,000 rows, every
/// (partition, offset) once, every value as produced.
#[tokio::test(flavor = "multi_thread")]
async fn hundred_thousand_events_land_exactly_once_with_their_values() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("e2e"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, 0..EVENTS, 0, order_payload))
        .await
        .unwrap();
    assert_eq!(ends, per_partition(3, EVENTS));

    let sluice = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, ""));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;

    let rows: Vec<(i64, String, String, i64, serde_json::Value, i32, i64)> = sqlx::query_as(&format!(
        "SELECT id, customer, amount::text, (extract(epoch from ts) * 1000)::int8, doc, kafka_partition, kafka_offset \
         FROM {table}"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as u64, EVENTS);
    for (id, customer, amount, ts_ms, doc, partition, offset) in rows {
        let i = id as u64;
        let expected: serde_json::Value = serde_json::from_str(&order_payload(i)).unwrap();
        assert_eq!(customer, format!("customer-{}", i % 97));
        assert_eq!(amount, format!("{}.{:02}", i % 1000, i % 100));
        assert_eq!(ts_ms as u64, 1_700_000_000_000 + i);
        assert_eq!(doc, expected);
        assert_eq!(partition as u64, i % 3, "record {i} went to partition i % 3");
        assert_eq!(offset as u64, i / 3, "record {i} is the (i/3)th of its partition");
    }
}

/// Record `i` goes to partition `i % partitions`: the end offset of each
/// partition after `events` records.
fn per_partition(partitions: i32, events: u64) -> Ends {
    (0..partitions)
        .map(|p| {
            (
                p,
                ((events + partitions as u64 - 1 - p as u64) / partitions as u64) as i64,
            )
        })
        .collect()
}

/// SIGKILL at random moments during the load, restart each time: still
/// exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart_five_times_loses_and_duplicates_nothing() {
    const KILLS: usize = 6;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("kill"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    // The load comes in KILLS + 1 chunks: chunk k is produced (paced, ~9 s)
    // while incarnation k runs, and the last one only after the last kill,
    // so that every kill lands while rows are still to be written, however
    // slow the machine is.
    const CHUNK: u64 = EVENTS / (KILLS as u64 + 1);
    let produce_chunk = |k: u64, per_second: u64| {
        let (brokers, t) = (services.brokers.clone(), topic.clone());
        let end = if k == KILLS as u64 { EVENTS } else { (k + 1) * CHUNK };
        tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, k * CHUNK..end, per_second, order_payload))
    };

    let extra = "batch_size = 500";
    let mut sluice = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, extra));
    // Rows in the table when each kill landed: every kill interrupted an
    // incarnation that had written rows and still had rows to write.
    let mut at_kills: Vec<i64> = Vec::new();
    for kill in 1..=KILLS {
        let producer = produce_chunk(kill as u64 - 1, 1_500);
        let before = count(&pool, &table).await;
        // Wait until this incarnation has written something, then kill it at a random moment.
        let progressed = eventually(Duration::from_secs(60), || async {
            count(&pool, &table).await > before
        })
        .await;
        assert!(
            progressed,
            "no progress before kill {kill}; log:\n{}",
            sluice.log_text()
        );
        let pause = rand::rng().random_range(50..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        // Panics unless the process was still running and died of the SIGKILL.
        sluice.kill9();
        // What the killed process committed, with no flush of it in flight.
        let at_kill = settled_offsets(&pool, &group, &topic)
            .await
            .iter()
            .map(|(_, o)| o)
            .sum::<i64>();
        assert_eq!(
            count(&pool, &table).await,
            at_kill,
            "rows = stored offsets at kill {kill}"
        );
        assert!(
            before < at_kill && at_kill < EVENTS as i64,
            "kill {kill} interrupted writing: {before} rows before this incarnation, {at_kill} at the kill, of {EVENTS}"
        );
        at_kills.push(at_kill);
        sluice = sluice.restart(&format!("sluice-{kill}.log"));
        producer.await.unwrap();
    }
    assert_eq!(at_kills.len(), KILLS, "every planned kill happened: {at_kills:?}");
    eprintln!("sigkill: rows at each kill {at_kills:?}");
    // Offsets continue across chunks: the last chunk's ends are the topic's.
    let ends = produce_chunk(KILLS as u64, 0).await.unwrap();
    assert_eq!(ends, per_partition(3, EVENTS));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(180), || {
        sluice.log_text()
    })
    .await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;
}

/// Two members in one group on 6 partitions; one is SIGKILLed mid-load and
/// restarted. Partitions move between them and back; still exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_members_one_killed_midway_stays_exactly_once() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("group"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 6).await;
    create_orders_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let producer = tokio::task::spawn_blocking(move || produce(&brokers, &t, 6, 0..EVENTS, 3_000, order_payload));

    let extra = "batch_size = 1000";
    let a = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, extra));
    let mut b = a.restart("member-b.log");
    // Both joined and writing.
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&pool, &table).await > 10_000
        })
        .await
    );
    let both = a.log_text().contains("partitions assigned") && b.log_text().contains("partitions assigned");
    assert!(
        both,
        "both members got partitions:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    b.kill9();
    let at_kill = count(&pool, &table).await;
    // A takes over all six partitions after B's session times out.
    assert!(
        eventually(Duration::from_secs(60), || async {
            count(&pool, &table).await > at_kill + 5_000
        })
        .await
    );
    let b2 = b.restart("member-b2.log");
    // The rejoin rebalance: B's new incarnation gets partitions back.
    let rejoined = eventually(Duration::from_secs(60), || async {
        b2.log_text().contains("partitions assigned")
    })
    .await;
    assert!(rejoined, "B rejoined:\n{}", b2.log_text());
    let ends = producer.await.unwrap();
    assert_eq!(ends, per_partition(6, EVENTS));
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
        format!("A:\n{}\nB2:\n{}", a.log_text(), b2.log_text())
    })
    .await;
    assert_exactly_once(&pool, &table, 6, EVENTS).await;
    // Whoever took B's partitions over (A after B's session expired, or B's
    // new incarnation in the same rebalance) resumed from the offsets stored
    // in Postgres: the restarted member's assignment shows them.
    // (A rebalance callback after its first assignment: under cooperative
    // rebalancing A may only gain partitions, under eager it also revokes.)
    assert!(
        a.log_text()
            .matches("INFO sluice::kafka::consumer: rebalance event=")
            .count()
            >= 2,
        "A saw the membership change:\n{}",
        a.log_text()
    );
    let resumed = b2
        .log_text()
        .lines()
        .any(|l| l.contains("partitions assigned") && !l.contains("stored=[]"));
    assert!(
        resumed,
        "B's new incarnation resumed from stored offsets:\n{}",
        b2.log_text()
    );
}

/// SIGTERM during load: exit 0 within the deadline; what was flushed is in
/// the table and the stored offsets match it exactly.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_commits_and_exits_zero_within_the_deadline() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("term"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let producer = tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, 0..EVENTS, 10_000, order_payload));

    let mut sluice = Sluice::start(&config(
        &services,
        &group,
        &topic,
        &table,
        ORDER_COLUMNS,
        "batch_size = 2000",
    ));
    // Mid-load, and every partition written to already (librdkafka may
    // read one partition's backlog before another's).
    let mid_load = eventually(Duration::from_secs(60), || async {
        let partitions: i64 = sqlx::query_scalar(&format!("SELECT count(DISTINCT kafka_partition) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        count(&pool, &table).await > 5_000 && partitions == 3
    })
    .await;
    assert!(mid_load, "log:\n{}", sluice.log_text());
    let sent = Instant::now();
    sluice.sigterm();
    // shutdown_timeout is 10 s in the test config.
    let status = sluice
        .wait_timeout(Duration::from_secs(11))
        .expect("exited within the deadline");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}; log:\n{}", sluice.log_text());
    let log = sluice.log_text();
    // The drain finished: its own line (not a warning that merely mentions
    // the buffers), and the totals agree: everything this only incarnation
    // consumed was written, and is what the stored offsets cover.
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.ends_with("drained: everything buffered is committed")),
        "drained before exit:\n{log}"
    );
    let consumed = log_number(&log, "pipeline totals", "consumed").unwrap_or_else(|| panic!("totals:\n{log}"));
    let written = log_number(&log, "pipeline totals", "written").unwrap_or_else(|| panic!("totals:\n{log}"));
    let ends = producer.await.unwrap();
    assert_eq!(ends, per_partition(3, EVENTS));

    // Rows and offsets agree per partition: offsets 0..next-1, each once.
    let stored = stored_offsets(&pool, &group, &topic).await;
    assert_eq!(stored.len(), 3, "every partition committed something");
    let covered: i64 = stored.iter().map(|(_, o)| o).sum();
    assert_eq!(
        (consumed, written),
        (covered as u64, covered as u64),
        "consumed = written = stored offsets: nothing buffered was left behind"
    );
    assert!(
        covered < EVENTS as i64,
        "SIGTERM landed mid-load: {covered} of {EVENTS}"
    );
    for (partition, next) in stored {
        let (n, distinct, max): (i64, i64, Option<i64>) = sqlx::query_as(&format!(
            "SELECT count(*), count(DISTINCT kafka_offset), max(kafka_offset) FROM {table} WHERE kafka_partition = $1"
        ))
        .bind(partition)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(n, next, "partition {partition}: rows = stored next_offset");
        assert_eq!(distinct, n, "partition {partition}: no duplicates");
        assert_eq!(max, Some(next - 1), "partition {partition}: no gap");
    }
    eprintln!("sigterm → exit took {took:?}");

    // A restart picks up exactly where the drain stopped.
    let again = sluice.restart("after-term.log");
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
        again.log_text()
    })
    .await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;
}

/// A record the consumer has handed over (it found nothing more to read)
/// does not wait out the flush interval for company: with the interval
/// pinned at 60 s, a record in the topic before sluice starts lands long
/// before it has passed, exactly once. (One record: a lane's next flush
/// waits an interval after its last, so records split over two fetch
/// responses could legitimately wait.)
#[tokio::test(flavor = "multi_thread")]
async fn handed_over_records_do_not_wait_out_the_flush_interval() {
    const RECORDS: u64 = 1;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("handover"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 0..RECORDS, 0, order_payload))
        .await
        .unwrap();
    assert_eq!(ends, per_partition(1, RECORDS));
    let extra = "flush_interval = \"60s\"\nmin_interval = \"60s\"\nmax_interval = \"120s\"";
    let cfg =
        config(&services, &group, &topic, &table, ORDER_COLUMNS, extra).replace("flush_interval = \"100ms\"\n", "");
    let started = Instant::now();
    let sluice = Sluice::start(&cfg);
    // Without the hand-over the batch would be flushed 60 s after its first
    // record arrived; 30 s (start-up and group join included) is the bound.
    await_rows(&pool, &table, RECORDS, Duration::from_secs(30), || sluice.log_text()).await;
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_exactly_once(&pool, &table, 1, RECORDS).await;
}

/// Handed-over records of a lane are still written at most once per flush
/// interval: with the interval pinned at 10 s, a record produced as soon as
/// the first one's row is visible lands in a transaction at least 10 s after
/// the first (their rows' `clock_timestamp()`s, taken during each COPY, tell),
/// and both land exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn handed_over_flushes_of_a_lane_stay_an_interval_apart() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("spacing"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    sqlx::query(&format!(
        "ALTER TABLE {table} ADD COLUMN landed timestamptz NOT NULL DEFAULT clock_timestamp()"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let produce_one = |i: u64| {
        let (brokers, t) = (services.brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, i..i + 1, 0, order_payload))
    };
    produce_one(0).await.unwrap();
    let extra = "flush_interval = \"10s\"\nmin_interval = \"10s\"\nmax_interval = \"20s\"";
    let cfg =
        config(&services, &group, &topic, &table, ORDER_COLUMNS, extra).replace("flush_interval = \"100ms\"\n", "");
    let sluice = Sluice::start(&cfg);
    await_rows(&pool, &table, 1, Duration::from_secs(60), || sluice.log_text()).await;
    produce_one(1).await.unwrap();
    await_rows(&pool, &table, 2, Duration::from_secs(60), || sluice.log_text()).await;
    assert_exactly_once(&pool, &table, 1, 2).await;
    let apart: f64 = sqlx::query_scalar(&format!(
        "SELECT extract(epoch FROM max(landed) - min(landed))::float8 FROM {table}"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        apart >= 10.0,
        "the second flush started {apart:.3} s after the first's COPY"
    );
}
