//! Start-up that waits: a Postgres and a Kafka that are not reachable yet
//! when `sluice run` starts are waited for (with `/healthz` 200 and
//! `/readyz` 503 naming what is awaited), up to `startup_timeout`.

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::*;

/// `GET path` on `addr`: the status code and the body; `None` while nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
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
    // Kafka: the bootstrap address has nothing behind it yet.
    let kafka_addr = format!("127.0.0.1:{}", free_port());
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
            matches!(http_get(&http, "/readyz"), Some((503, body)) if body.contains("waiting for postgres"))
        })
        .await,
        "/readyz while Postgres is down: {:?}\n{}",
        http_get(&http, "/readyz"),
        sluice.log_text()
    );
    assert_eq!(http_get(&http, "/healthz").map(|(code, _)| code), Some(200));
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
            matches!(http_get(&http, "/readyz"), Some((503, body)) if body.contains("waiting for kafka"))
        })
        .await,
        "/readyz while Kafka is away: {:?}\n{}",
        http_get(&http, "/readyz"),
        sluice.log_text()
    );
    assert_eq!(http_get(&http, "/healthz").map(|(code, _)| code), Some(200));

    // Kafka comes up at the bootstrap address: everything lands, once.
    let _kafka = BlackholeProxy::start_at(&kafka_addr, services.brokers.clone()).await;
    let pool = PgPool::connect(&pg.url()).await.unwrap();
    await_rows(&pool, &table, 200, Duration::from_secs(90), || sluice.log_text()).await;
    assert_exactly_once(&pool, &table, 2, 200).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(http_get(&http, "/readyz"), Some((200, _)))
        })
        .await,
        "ready once running: {:?}",
        http_get(&http, "/readyz")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_gives_up_after_startup_timeout() {
    let services = Services::from_env();
    let (topic, group, table) = (unique("startup"), unique("g"), unique("orders"));
    let nowhere = Services {
        brokers: services.brokers.clone(),
        database_url: format!("postgres://postgres@127.0.0.1:{}/postgres", free_port()),
    };
    let cfg = format!(
        "startup_timeout = \"2s\"\n{}",
        config(&nowhere, &group, &topic, &table, ORDER_COLUMNS, "")
    );
    let mut sluice = Sluice::start(&cfg);
    let status = sluice.wait_timeout(Duration::from_secs(30));
    let log = sluice.log_text();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "exits 1 after startup_timeout:\n{log}"
    );
    assert!(log.contains("waiting for postgres"), "{log}");
    assert!(log.contains("startup_timeout 2s passed"), "{log}");
}
