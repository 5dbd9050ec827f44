//! Start-up that waits: a Postgres and a Kafka that are not reachable yet
//! when `sluice run` starts are waited for (with `/healthz` 200 and
//! `/readyz` 503 naming what is awaited), up to `startup_timeout`.

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::*;

/// A config of one pipeline reading the test broker (unless `brokers`)
/// into `database_url`, with `startup_timeout`.
fn startup_config(brokers: &str, database_url: String, startup_timeout: &str) -> String {
    let target = Services {
        brokers: brokers.to_owned(),
        database_url,
    };
    let (topic, group, table) = (unique("startup"), unique("g"), unique("orders"));
    format!(
        "startup_timeout = \"{startup_timeout}\"\n{}",
        config(&target, &group, &topic, &table, ORDER_COLUMNS, "")
    )
}

/// Waits up to `timeout` for `sluice` to exit: its exit code and its log.
fn exit_of(sluice: &mut Sluice, timeout: Duration) -> (Option<i32>, String) {
    let status = sluice.wait_timeout(timeout);
    (status.and_then(|s| s.code()), sluice.log_text())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_waits_for_postgres_then_kafka() {
    let services = Services::from_env();
    let (topic, group, table) = (unique("startup"), unique("g"), unique("orders"));
    create_topic(&services.brokers, &topic, 2).await;
    let (brokers, t) = (services.brokers.clone(), topic.clone());
    tokio::task::spawn_blocking(move || produce(&brokers, &t, 2, 0..200, 0, order_payload))
        .await
        .unwrap();

    // A private Postgres with the table, down when sluice starts.
    let pg = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap();
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    create_orders_table(&pool, &table).await;
    pool.close().await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();
    // Kafka: the bootstrap address accepts connections (into the backlog)
    // but nothing answers yet, as with a broker still starting.
    let kafka_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka_addr = kafka_listener.local_addr().unwrap().to_string();
    let reachable_later = Services {
        brokers: kafka_addr.clone(),
        database_url: pg.url(),
    };
    let cfg = format!(
        "startup_timeout = \"2m\"\n{}",
        config(&reachable_later, &group, &topic, &table, ORDER_COLUMNS, "")
    );
    let http = format!("127.0.0.1:{}", free_port());
    let sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &http)]);

    // Alive, not ready, waiting for Postgres, retrying with a log line each time.
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(http_get(&http, "/readyz").await, Some((503, body)) if body.contains("waiting for postgres"))
        })
        .await,
        "/readyz while Postgres is down: {:?}\n{}",
        http_get(&http, "/readyz").await,
        sluice.log_text()
    );
    assert_eq!(http_get(&http, "/healthz").await.map(|(code, _)| code), Some(200));
    assert!(
        eventually(Duration::from_secs(30), || async {
            sluice.log_text().contains("postgres is not reachable yet; retrying")
                && sluice.log_text().contains("attempt=2")
        })
        .await,
        "a log line per attempt:\n{}",
        sluice.log_text()
    );

    // Postgres comes up; Kafka is still away.
    let pg = tokio::task::spawn_blocking(move || {
        pg.resume();
        pg
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            matches!(http_get(&http, "/readyz").await, Some((503, body)) if body.contains("waiting for kafka"))
        })
        .await,
        "/readyz while Kafka is away: {:?}\n{}",
        http_get(&http, "/readyz").await,
        sluice.log_text()
    );
    assert_eq!(http_get(&http, "/healthz").await.map(|(code, _)| code), Some(200));

    // Kafka comes up at the bootstrap address: everything lands, once.
    let _kafka = BlackholeProxy::start_on(kafka_listener, services.brokers.clone()).await;
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    await_rows(&pool, &table, 200, Duration::from_secs(90), || sluice.log_text()).await;
    assert_exactly_once(&pool, &table, 2, 200).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(http_get(&http, "/readyz").await, Some((200, _)))
        })
        .await,
        "ready once running: {:?}",
        http_get(&http, "/readyz").await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_gives_up_after_startup_timeout() {
    let services = Services::from_env();
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let started = std::time::Instant::now();
    let mut sluice = Sluice::start(&startup_config(&services.brokers, nowhere, "2s"));
    let (code, log) = exit_of(&mut sluice, Duration::from_secs(30));
    assert_eq!(code, Some(1), "exits 1 after startup_timeout:\n{log}");
    // 2 s, and the process's own start and exit.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}:\n{log}",
        started.elapsed()
    );
    assert!(log.contains("waiting for postgres"), "{log}");
    assert!(log.contains("startup_timeout 2s passed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_will_not_clear_by_itself_is_not_waited_for() {
    let services = Services::from_env();
    let (base, _) = services.database_url.rsplit_once('/').unwrap();
    let missing_database = format!("{base}/{}", unique("no_such_db"));
    let started = std::time::Instant::now();
    let mut sluice = Sluice::start(&startup_config(&services.brokers, missing_database, "2m"));
    let (code, log) = exit_of(&mut sluice, Duration::from_secs(30));
    assert_eq!(code, Some(1), "a missing database exits 1:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not after 2m:\n{log}"
    );
    assert!(log.contains("does not exist"), "{log}");
    assert!(!log.contains("not reachable yet"), "not retried:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_waiting_exits_zero_and_no_password_is_shown() {
    let services = Services::from_env();
    let password = "pw-s3cret-startup";
    let nowhere = format!("postgres://sluice:{password}@127.0.0.1:{}/postgres", free_port());
    let cfg = startup_config(&services.brokers, nowhere, "2m");
    let http = format!("127.0.0.1:{}", free_port());
    let mut sluice = Sluice::start_with_env(&cfg, &[("SLUICE_TELEMETRY__HTTP_ADDR", &http)]);
    assert!(
        eventually(Duration::from_secs(30), || async {
            sluice.log_text().contains("attempt=2")
        })
        .await,
        "retrying:\n{}",
        sluice.log_text()
    );
    let (code, body) = http_get(&http, "/readyz")
        .await
        .expect("/readyz answers while starting");
    assert_eq!(code, 503);
    assert!(body.contains("waiting for postgres"), "{body}");
    assert!(!body.contains(password), "{body}");
    let (_, status) = http_get(&http, "/status")
        .await
        .expect("/status answers while starting");
    assert!(!status.contains(password), "{status}");
    sluice.sigterm();
    let (code, log) = exit_of(&mut sluice, Duration::from_secs(20));
    assert_eq!(code, Some(0), "SIGTERM while waiting exits 0:\n{log}");
    assert!(!log.contains(password), "{log}");
}
