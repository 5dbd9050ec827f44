//! Kafka and Postgres in Docker, for running the tests without
//! `scripts/test.sh`: when `SLUICE_KAFKA_BROKERS` and
//! `SLUICE_TEST_DATABASE_URL` are both unset (`harness::ServiceSource`).
//!
//! Kafka is the `apache/kafka` image in KRaft mode (testcontainers-modules'
//! `kafka::apache`, JVM image), Postgres the `postgres` image with trust
//! authentication. nextest runs every test in a process of its own, so the
//! containers are named and reused (`ReuseDirective::Always`): the first
//! test process starts them, the others, and later runs, find them
//! running. A file lock keeps two processes from creating them at once.
//! They are left running after the tests; `docker rm -f sluice-it-kafka
//! sluice-it-postgres` removes them (a fresh start also forgets every test
//! topic and table).
//!
//! The broker advertises `127.0.0.1:<mapped port>`: Docker must run on
//! this host.

use std::time::Duration;

use testcontainers::core::client::docker_client_instance;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ImageExt, ReuseDirective};
use testcontainers_modules::kafka::apache;
use testcontainers_modules::postgres::Postgres;

use crate::harness::Services;

const KAFKA_CONTAINER: &str = "sluice-it-kafka";
const POSTGRES_CONTAINER: &str = "sluice-it-postgres";
const POSTGRES_TAG: &str = "16-alpine";
/// How long the Docker engine has to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts (or finds) the containers; blocking. `Err` says why not: no
/// Docker engine, or a container that would not start.
pub fn start() -> Result<Services, String> {
    // On a thread of its own: the caller may be inside a test's runtime,
    // where another one cannot block.
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for testcontainers: {e}"))?;
        runtime.block_on(start_async())
    })
    .join()
    .map_err(|_| "starting the containers panicked".to_owned())?
}

/// Whether a Docker engine answers; `Err` says why not.
pub fn docker_available() -> Result<(), String> {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(ping())
    })
    .join()
    .map_err(|_| "pinging Docker panicked".to_owned())?
}

async fn ping() -> Result<(), String> {
    let docker = docker_client_instance()
        .await
        .map_err(|e| format!("no Docker client: {e}"))?;
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the Docker engine does not answer: {e}")),
        Err(_) => Err(format!("the Docker engine did not answer within {PING_TIMEOUT:?}")),
    }
}

async fn start_async() -> Result<Services, String> {
    ping().await?;
    let _lock = CreationLock::take()?;
    let kafka = apache::Kafka::default()
        .with_jvm_image()
        .with_container_name(KAFKA_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|e| format!("starting {KAFKA_CONTAINER} (apache/kafka): {e}"))?;
    let kafka_port = kafka
        .get_host_port_ipv4(apache::KAFKA_PORT)
        .await
        .map_err(|e| format!("{KAFKA_CONTAINER}'s port: {e}"))?;
    let postgres = Postgres::default()
        .with_host_auth()
        .with_tag(POSTGRES_TAG)
        .with_container_name(POSTGRES_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|e| format!("starting {POSTGRES_CONTAINER} (postgres:{POSTGRES_TAG}): {e}"))?;
    let postgres_port = postgres
        .get_host_port_ipv4(5432)
        .await
        .map_err(|e| format!("{POSTGRES_CONTAINER}'s port: {e}"))?;
    // Reused containers are not removed when their handles drop.
    Ok(Services {
        brokers: format!("127.0.0.1:{kafka_port}"),
        database_url: format!("postgres://postgres@127.0.0.1:{postgres_port}/postgres"),
    })
}

/// An exclusive `flock` on a file in the temp dir, held while the
/// containers are looked up or created: two test processes starting at
/// once would otherwise both create a container of the same name.
struct CreationLock(std::fs::File);

impl CreationLock {
    fn take() -> Result<CreationLock, String> {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join("sluice-it-containers.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Blocks until the other process has its containers running.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock {}: {}", path.display(), std::io::Error::last_os_error()));
        }
        Ok(CreationLock(file))
    }
}

impl Drop for CreationLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::harness::*;

    /// The variables decide, and with the broker's set nothing else is
    /// consulted (no Docker call: `from_env` never reaches `containers`).
    #[test]
    fn the_environment_decides_where_the_services_come_from() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            ServiceSource::decide(s("k:9092"), s("postgres://db/x")),
            Ok(ServiceSource::FromEnv {
                brokers: "k:9092".into(),
                database_url: "postgres://db/x".into()
            })
        );
        assert_eq!(
            ServiceSource::decide(s("k:9092"), None),
            Ok(ServiceSource::FromEnv {
                brokers: "k:9092".into(),
                database_url: "postgres://postgres@127.0.0.1:5432/postgres".into()
            })
        );
        assert_eq!(ServiceSource::decide(None, None), Ok(ServiceSource::Containers));
        assert_eq!(ServiceSource::decide(s(" "), s("")), Ok(ServiceSource::Containers));
        let err = ServiceSource::decide(None, s("postgres://db/x")).unwrap_err();
        assert!(err.contains("SLUICE_KAFKA_BROKERS is not"), "{err}");
    }

    /// The Docker path end to end: Kafka (KRaft) and Postgres in
    /// containers, 100 records through sluice, exactly once. Skipped, with
    /// the reason, where no Docker engine answers (as on CI, which uses the
    /// environment's services).
    #[tokio::test(flavor = "multi_thread")]
    async fn containers_carry_records_end_to_end() {
        if let Err(why) = super::docker_available() {
            eprintln!("skipped: the testcontainers path needs a Docker engine: {why}");
            return;
        }
        let services = tokio::task::spawn_blocking(super::start)
            .await
            .unwrap()
            .expect("Kafka and Postgres in Docker");
        let pool = services.pool().await;
        let (topic, group, table) = (unique("docker"), unique("g"), unique("orders"));
        create_topic(&services.brokers, &topic, 2).await;
        create_orders_table(&pool, &table).await;
        let (brokers, t) = (services.brokers.clone(), topic.clone());
        let ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 2, 0..100, 0, order_payload))
            .await
            .unwrap();
        let sluice = Sluice::start(&config(&services, &group, &topic, &table, ORDER_COLUMNS, ""));
        await_stored_offsets(&pool, &group, &topic, &ends, Duration::from_secs(120), || {
            sluice.log_text()
        })
        .await;
        assert_exactly_once(&pool, &table, 2, 100).await;
    }
}
