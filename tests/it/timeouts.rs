//! A batch that can never be written within the time allowed (defect 4 of
//! "Lossless means lossless": it was retried unchanged for ever) is split
//! until its parts fit, and everything lands exactly once.

use std::time::Duration;

use crate::harness::*;

/// Every row costs the database 5 ms (a trigger), and a statement may take
/// 1 s: a COPY of 1,000 rows can never finish. sluice splits the batch after
/// two timeouts until a part fits, goes on at that size, and all 2,000 rows
/// land exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_keeps_timing_out_is_split_until_it_fits() {
    const EVENTS: u64 = 2_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("slow"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 1).await;
    create_orders_table(&pool, &table).await;
    sqlx::query(&format!(
        "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(0.005); RETURN NEW; END $$"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_slow()"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let brokers = services.brokers.clone();
    let t = topic.clone();
    let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 1, 0..EVENTS, 0, order_payload))
        .await
        .unwrap();
    let extra = "batch_size = 1000\nflush_interval = \"2s\"";
    let cfg = config(&services, &group, &topic, &table, ORDER_COLUMNS, extra)
        .replace("flush_interval = \"100ms\"\n", "")
        .replace("[postgres]\n", "[postgres]\nstatement_timeout = \"1s\"\n");
    let sluice = Sluice::start(&cfg);
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(150), || {
        sluice.log_text()
    })
    .await;
    assert_exactly_once(&pool, &table, 1, EVENTS).await;
    let log = sluice.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("flush keeps timing out: splitting the batch")),
        "the batch was split:\n{log}"
    );
}
