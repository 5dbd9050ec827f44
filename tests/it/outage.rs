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
    let ends = producer.await.unwrap();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    let log = sluice.log_text();
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

/// The blackhole test's settings: the breaker's, the database timeouts, and
/// how long the network is cut.
struct BlackholePlan {
    failure_threshold: u32,
    open_duration: Duration,
    max_open_duration: Duration,
    connect_timeout: Duration,
    write_timeout: Duration,
    outage: Duration,
}

/// The breaker's open duration varies by ±20 % (src/pipeline/breaker.rs).
const JITTER: f64 = 0.2;
/// Slack for the first attempt to start after the cut and for scheduling.
const SLACK: Duration = Duration::from_secs(1);

impl BlackholePlan {
    fn toml(&self) -> String {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        format!(
            "[breaker]\nfailure_threshold = {}\nopen_duration = {}\nmax_open_duration = {}\n\n\
             [postgres]\nconnect_timeout = {}\nwrite_timeout = {}\n",
            self.failure_threshold,
            ms(self.open_duration),
            ms(self.max_open_duration),
            ms(self.connect_timeout),
            ms(self.write_timeout),
        )
    }

    /// The `n`th open duration (from 0) without jitter: doubling, capped.
    fn open(&self, n: u32) -> Duration {
        (self.open_duration * 2u32.pow(n.min(16))).min(self.max_open_duration)
    }

    /// The most failed attempts the breaker allows while the database is
    /// unreachable for `outage`: `failure_threshold` in a row to open it,
    /// then one trial at the end of each open period, each period at its
    /// shortest (-20 %) and every attempt taken as instant.
    fn most_failures_with_breaker(&self) -> usize {
        let mut at = Duration::ZERO;
        let mut trials = 0;
        loop {
            at += self.open(trials).mul_f64(1.0 - JITTER);
            if at > self.outage {
                return self.failure_threshold as usize + trials as usize;
            }
            trials += 1;
        }
    }

    /// The fewest failed attempts the breaker allows: every attempt takes
    /// its whole `write_timeout`, every open period its longest (+20 %).
    fn fewest_failures_with_breaker(&self) -> usize {
        let attempt = self.write_timeout + Duration::from_millis(100);
        let mut at = SLACK;
        let mut failures = 0;
        loop {
            if failures >= self.failure_threshold {
                at += self.open(failures - self.failure_threshold).mul_f64(1.0 + JITTER);
            } else if failures > 0 {
                at += retry_backoff(failures);
            }
            at += attempt;
            if at > self.outage {
                return failures as usize;
            }
            failures += 1;
        }
    }

    /// The fewest failed attempts a writer without the breaker would make:
    /// back to back, each cut off by `write_timeout` at the latest, with the
    /// writer's own retry backoff between them.
    fn fewest_failures_without_breaker(&self) -> usize {
        let attempt = self.write_timeout + Duration::from_millis(100);
        let mut at = SLACK;
        let mut failures = 0;
        loop {
            at += attempt;
            if at > self.outage {
                return failures as usize;
            }
            failures += 1;
            at += retry_backoff(failures);
        }
    }

    /// The longest the writer can take to write again once the network is
    /// back: a trial that started just before on a dead connection runs to
    /// its `write_timeout`, the breaker reopens for at most its capped
    /// duration (+20 %), then the next trial goes through.
    fn slowest_recovery(&self) -> Duration {
        self.write_timeout + self.max_open_duration.mul_f64(1.0 + JITTER) + 2 * SLACK
    }
}

/// The writer's own backoff after `failures` consecutive failures, while
/// the breaker is closed (`backoff` in src/postgres/writer/mod.rs: 100 ms doubling,
/// at most 5 s).
fn retry_backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(failures.min(10) - 1)).min(Duration::from_secs(5))
}

/// Postgres blackholed for 30 s during load: no loss, memory bounded, no
/// more attempts than the breaker's settings allow (fewer than a writer
/// without it would make), recovery within what they imply once the
/// network is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_thirty_second_blackhole_is_ridden_out() {
    const EVENTS: u64 = 60_000;
    // The open duration grows past the writer's own 5 s retry backoff, so
    // that the breaker, not the backoff, is what spaces the attempts out.
    let plan = BlackholePlan {
        failure_threshold: 1,
        open_duration: Duration::from_secs(2),
        max_open_duration: Duration::from_secs(8),
        connect_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(3),
        outage: Duration::from_secs(30),
    };
    let (most, fewest) = (plan.most_failures_with_breaker(), plan.fewest_failures_with_breaker());
    let without = plan.fewest_failures_without_breaker();
    assert!(
        most < without,
        "the plan tells a breaker from none: at most {most} failures with it, at least {without} without"
    );
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
    // One writer lane: the attempts are counted against one writer's model
    // (with two, both lanes' transactions in flight at the cut fail, and
    // the second failure finds the breaker already open).
    let extra = "max_buffer_records = 10000\nbatch_size = 1000\nwriters = 1";
    let cfg = config(&via_proxy, &group, &topic, &table, ORDER_COLUMNS, extra).replace("[postgres]\n", &plan.toml());
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
    tokio::time::sleep(plan.outage).await;
    let during = count(&pool, &table).await;
    let log = sluice.log_text();
    let failed_attempts = occurrences(&log, "flush failed") - failures_before;
    proxy.set_forwarding(true);
    let restored = Instant::now();
    let recovered = eventually(plan.slowest_recovery() + Duration::from_secs(10), || async {
        count(&pool, &table).await > during
    })
    .await;
    let recovery = restored.elapsed();
    assert!(recovered, "writing resumed after the blackhole:\n{}", sluice.log_text());

    let ends = producer.await.unwrap();
    await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
        sluice.log_text()
    })
    .await;
    assert_exactly_once(&pool, &table, 3, EVENTS).await;

    let log = sluice.log_text();
    let peak = peak_rss(pid);
    eprintln!(
        "blackhole: {} rows before, {} during (the commit in flight at the cut), {failed_attempts} failed attempts in 30 s \
         (the breaker allows {fewest}..={most}; a writer without it makes at least {without}), \
         writing resumed {recovery:?} after the network came back, peak RSS {:.1} MiB",
        cut_at,
        during - cut_at,
        peak as f64 / (1024.0 * 1024.0)
    );
    assert!(
        (fewest..=most).contains(&failed_attempts),
        "{failed_attempts} failed attempts while the database was unreachable; the breaker allows {fewest}..={most} \
         (a writer without it: at least {without}):\n{log}"
    );
    // With a threshold of 1, every failed attempt (the first, then each
    // trial) opens the breaker, and nothing else does.
    assert_eq!(plan.failure_threshold, 1);
    assert_eq!(
        occurrences(&log, "circuit breaker opened"),
        occurrences(&log, "flush failed"),
        "one opening per failed attempt:\n{log}"
    );
    assert!(
        log.contains("partitions paused"),
        "the buffer filled and the partitions paused:\n{log}"
    );
    assert!(
        recovery <= plan.slowest_recovery(),
        "recovered in {recovery:?}; the breaker allows {:?}",
        plan.slowest_recovery()
    );
    // 64 MiB + default buffer bytes (64 MiB) + 2 × 8 MiB batches + 16 MiB prefetch.
    assert!(peak < 160 * 1024 * 1024, "peak RSS {peak}");
}
