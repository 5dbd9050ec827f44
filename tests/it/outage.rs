//! The database's worst days: restarts and a network blackhole during load.
//! The breaker opens, partitions pause, nothing is lost or doubled, and
//! writing resumes shortly after the database is back.

use std::time::{Duration, Instant};

use crate::harness::*;

/// Counts log lines containing `needle`.
fn occurrences(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Postgres restarted twice during a 200,000-event load: exactly 200,000
/// rows; the breaker opened and closed; partitions paused while it was open.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_twice_during_load_loses_and_doubles_nothing() {
    const EVENTS: u64 = 200_000;
    let services = Services::from_env();
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap();
    let private = Services {
        brokers: services.brokers.clone(),
        database_url: pg.url(),
    };
    let pool = private.pool().await;
    let (topic, group, table) = (unique("restart"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    // A small buffer, so the outage fills it and the partitions visibly pause.
    let extra = "max_buffer_records = 8000\nbatch_size = 2000";
    let cfg = config(&private, &group, &topic, &table, ORDER_COLUMNS, extra).replace(
        "[postgres]\n",
        "[breaker]\nopen_duration = \"500ms\"\nmax_open_duration = \"2s\"\n\n[postgres]\nconnect_timeout = \"1s\"\n",
    );
    let sluice = Sluice::start(&cfg);
    let brokers = services.brokers.clone();
    let t = topic.clone();
    // ~20 s of load.
    let producer = tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, 0..EVENTS, 10_000, order_payload));

    for restart in 0..2 {
        let before = count(&pool, &table).await;
        assert!(
            eventually(Duration::from_secs(60), || async {
                count(&pool, &table).await > before + 10_000
            })
            .await
        );
        let pg_ref = &pg;
        tokio::task::block_in_place(|| pg_ref.restart(Duration::from_secs(5)));
        eprintln!("restart {restart} done at {} rows", count(&pool, &table).await);
    }
    producer.await.unwrap();
    await_rows(&pool, &table, EVENTS, Duration::from_secs(120), || sluice.log_text()).await;
    let log = sluice.log_text();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;
    assert!(
        occurrences(&log, "circuit breaker opened") >= 2,
        "the breaker opened at each restart:\n{log}"
    );
    assert!(
        log.contains("to=\"closed\"") || log.contains("to=closed"),
        "and closed again:\n{log}"
    );
    assert!(
        occurrences(&log, "partitions paused") >= 2,
        "partitions paused while it was open:\n{log}"
    );
    drop(pool);
}

/// Postgres blackholed for 30 s during load: no loss, memory bounded, few
/// attempts while the breaker is open, recovery within seconds of the
/// network coming back.
#[tokio::test(flavor = "multi_thread")]
async fn a_thirty_second_blackhole_is_ridden_out() {
    const EVENTS: u64 = 60_000;
    let services = Services::from_env();
    let pool = services.pool().await;
    let proxy = BlackholeProxy::start("127.0.0.1:5432".into()).await;
    let via_proxy = Services {
        brokers: services.brokers.clone(),
        database_url: services.database_url.replace("127.0.0.1:5432", &proxy.addr.to_string()),
    };
    assert_ne!(
        via_proxy.database_url, services.database_url,
        "the test database is reached through the proxy"
    );
    let (topic, group, table) = (unique("blackhole"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 3).await;
    create_orders_table(&pool, &table).await;
    let extra = "max_buffer_records = 10000\nbatch_size = 1000";
    let cfg = config(&via_proxy, &group, &topic, &table, ORDER_COLUMNS, extra).replace(
        "[postgres]\n",
        "[breaker]\nopen_duration = \"1s\"\nmax_open_duration = \"4s\"\n\n[postgres]\nconnect_timeout = \"2s\"\nwrite_timeout = \"3s\"\n",
    );
    let sluice = Sluice::start(&cfg);
    let pid = sluice.child.id();
    let brokers = services.brokers.clone();
    let t = topic.clone();
    // ~40 s of load at 1,500/s: before, during and after the blackhole.
    let producer = tokio::task::spawn_blocking(move || produce(&brokers, &t, 3, 0..EVENTS, 1_500, order_payload));
    assert!(eventually(Duration::from_secs(60), || async { count(&pool, &table).await > 3_000 }).await);

    let failures_before = occurrences(&sluice.log_text(), "flush failed");
    proxy.set_forwarding(false);
    let cut_at = count(&pool, &table).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = count(&pool, &table).await;
    let log = sluice.log_text();
    let failed_attempts = occurrences(&log, "flush failed") - failures_before;
    proxy.set_forwarding(true);
    let restored = Instant::now();
    let recovered = eventually(Duration::from_secs(30), || async {
        count(&pool, &table).await > during
    })
    .await;
    let recovery = restored.elapsed();
    assert!(recovered, "writing resumed after the blackhole:\n{}", sluice.log_text());

    producer.await.unwrap();
    await_rows(&pool, &table, EVENTS, Duration::from_secs(120), || sluice.log_text()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;

    let log = sluice.log_text();
    let peak = peak_rss(pid);
    eprintln!(
        "blackhole: {} rows before, {} during (the commit in flight at the cut), {failed_attempts} failed attempts in 30 s, \
         writing resumed {recovery:?} after the network came back, peak RSS {:.1} MiB",
        cut_at,
        during - cut_at,
        peak as f64 / (1024.0 * 1024.0)
    );
    assert!(occurrences(&log, "circuit breaker opened") >= 1, "{log}");
    assert!(
        log.contains("partitions paused"),
        "the buffer filled and the partitions paused:\n{log}"
    );
    // Without the breaker, 3 s timeouts back to back would be ~10 attempts;
    // with it, the opening attempts plus one trial per open period.
    assert!(
        failed_attempts <= 12,
        "{failed_attempts} attempts while the database was unreachable"
    );
    assert!(recovery < Duration::from_secs(10), "recovered in {recovery:?}");
    // 64 MiB + default buffer bytes (64 MiB) + 2 × 8 MiB batches + 16 MiB prefetch.
    assert!(peak < 160 * 1024 * 1024, "peak RSS {peak}");
}
