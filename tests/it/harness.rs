//! Test harness: real services, from the environment set by
//! `scripts/test.sh`, or else from Docker.
//!
//! `SLUICE_KAFKA_BROKERS` and `SLUICE_TEST_DATABASE_URL` name the broker and
//! the database (CI's path). When both are unset, Kafka (KRaft,
//! `apache/kafka`) and Postgres are started in Docker with testcontainers
//! (`containers`). Every test makes its own topic, group and table, so tests
//! run in parallel against one broker and one database.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct Services {
    pub brokers: String,
    pub database_url: String,
}

/// The database when only `SLUICE_KAFKA_BROKERS` is set.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Where the test services come from.
#[derive(Debug, PartialEq, Eq)]
pub enum ServiceSource {
    /// `SLUICE_KAFKA_BROKERS` (and `SLUICE_TEST_DATABASE_URL`, else the
    /// local default): what `scripts/test.sh` and CI set. No Docker call.
    FromEnv { brokers: String, database_url: String },
    /// Neither is set: Kafka and Postgres in Docker (`containers`).
    Containers,
}

impl ServiceSource {
    /// Decides from the two variables' values (unset or empty: `None`).
    pub fn decide(brokers: Option<String>, database_url: Option<String>) -> Result<ServiceSource, String> {
        let set = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        match (set(brokers), set(database_url)) {
            (Some(brokers), database_url) => Ok(ServiceSource::FromEnv {
                brokers,
                database_url: database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            }),
            (None, None) => Ok(ServiceSource::Containers),
            (None, Some(_)) => Err(
                "SLUICE_TEST_DATABASE_URL is set but SLUICE_KAFKA_BROKERS is not: set both \
                 (scripts/test.sh does) or neither (Kafka and Postgres then run in Docker)"
                    .to_owned(),
            ),
        }
    }

    fn from_env() -> Result<ServiceSource, String> {
        let var = |name| std::env::var(name).ok();
        Self::decide(var("SLUICE_KAFKA_BROKERS"), var("SLUICE_TEST_DATABASE_URL"))
    }
}

impl Services {
    /// The services of this test process, resolved once (see
    /// [`ServiceSource`]). Without any, the test fails with instructions
    /// instead of passing.
    pub fn from_env() -> Services {
        static RESOLVED: OnceLock<Result<Services, String>> = OnceLock::new();
        let resolved = RESOLVED.get_or_init(|| match ServiceSource::from_env()? {
            ServiceSource::FromEnv { brokers, database_url } => Ok(Services { brokers, database_url }),
            ServiceSource::Containers => crate::containers::start().map_err(|why| {
                format!(
                    "SLUICE_KAFKA_BROKERS and SLUICE_TEST_DATABASE_URL are unset and the services cannot run \
                     in Docker ({why}): run the tests with scripts/test.sh, which starts the broker and Postgres"
                )
            }),
        });
        match resolved {
            Ok(services) => services.clone(),
            Err(why) => panic!("{why}"),
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

/// What a producer's delivery reports add up to: per partition, the offset
/// after the last acknowledged record (its high watermark when the topic is
/// the test's own), sorted by partition, in the shape of [`stored_offsets`].
pub type Ends = Vec<(i32, i64)>;

/// Counts delivery reports and keeps each partition's end offset.
#[derive(Default)]
pub struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    ends: Mutex<BTreeMap<i32, i64>>,
}

impl Deliveries {
    pub fn record(&self, result: &DeliveryResult<'_>) {
        match result {
            Ok(msg) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut ends = self.ends.lock().unwrap();
                let end = ends.entry(msg.partition()).or_default();
                *end = (*end).max(msg.offset() + 1);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Panics unless exactly `expected` records were acknowledged and none
    /// failed; returns the end offsets.
    pub fn ends(&self, expected: u64) -> Ends {
        assert_eq!(self.failed.load(Ordering::Relaxed), 0, "delivery failures");
        assert_eq!(self.ok.load(Ordering::Relaxed), expected, "every record acknowledged");
        self.ends.lock().unwrap().iter().map(|(p, o)| (*p, *o)).collect()
    }
}

/// A producer context that feeds [`Deliveries`].
pub struct CountingContext(pub Arc<Deliveries>);
impl ClientContext for CountingContext {}
impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.0.record(result);
    }
}

/// Produces records `range` to `topic`, record `i` to partition
/// `i % partitions`, with the payload `payload(i)`. `per_second` = 0 means
/// as fast as possible. Panics unless every record is acknowledged; returns
/// the partitions' end offsets.
pub fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    range: std::ops::Range<u64>,
    per_second: u64,
    payload: impl Fn(u64) -> String,
) -> Ends {
    produce_records(brokers, topic, range, per_second, |i| {
        (i.to_string(), Some(payload(i)), (i % partitions as u64) as i32)
    })
}

/// Produces records `range` to `topic`: `record(i)` gives record `i`'s key,
/// value (`None` for a tombstone) and partition. `per_second` = 0 means as
/// fast as possible. Panics unless every record is acknowledged; returns
/// the partitions' end offsets.
pub fn produce_records(
    brokers: &str,
    topic: &str,
    range: std::ops::Range<u64>,
    per_second: u64,
    record: impl Fn(u64) -> (String, Option<String>, i32),
) -> Ends {
    let deliveries = Arc::new(Deliveries::default());
    let producer: ThreadedProducer<CountingContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("acks", "all")
        .create_with_context(CountingContext(deliveries.clone()))
        .expect("producer");
    let started = Instant::now();
    let total = range.end - range.start;
    for (n, i) in range.enumerate() {
        if per_second > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / per_second as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let (key, value, partition) = record(i);
        let mut record = BaseRecord::<String, String>::to(topic).key(&key).partition(partition);
        if let Some(value) = &value {
            record = record.payload(value);
        }
        send_retrying(&producer, record);
    }
    producer.flush(Duration::from_secs(60)).expect("producer flush");
    deliveries.ends(total)
}

/// Sends `record`, waiting while librdkafka's local queue is full.
pub fn send_retrying<C, K, P>(producer: &ThreadedProducer<C>, mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>)
where
    C: ProducerContext + 'static,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// A `sluice` process with its own config file and log.
pub struct Sluice {
    pub child: Child,
    pub log: PathBuf,
    pub config: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

/// Writes `config` into a temp dir; returns the dir and the path.
pub fn write_config(config: &str) -> (Arc<tempfile::TempDir>, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sluice.toml");
    fs::write(&path, config).expect("write config");
    (Arc::new(dir), path)
}

impl Sluice {
    pub fn start(config: &str) -> Sluice {
        let (dir, path) = write_config(config);
        Self::start_with(dir, path, "sluice.log", &[])
    }

    /// Starts sluice with extra environment variables (which override the
    /// config file: `SLUICE_TELEMETRY__HTTP_ADDR`, `OTEL_*`, ...).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Sluice {
        let (dir, path) = write_config(config);
        Self::start_with(dir, path, "sluice.log", env)
    }

    /// Starts another process on the same config (a restart, or a second member).
    pub fn restart(&self, log_name: &str) -> Sluice {
        Self::start_with(self._dir.clone(), self.config.clone(), log_name, &[])
    }

    /// Unless `env` says otherwise, the telemetry HTTP server listens on a
    /// port of its own (`127.0.0.1:0`), so that processes running in
    /// parallel never compete for the default one.
    fn start_with(dir: Arc<tempfile::TempDir>, config: PathBuf, log_name: &str, env: &[(&str, &str)]) -> Sluice {
        let log = dir.path().join(log_name);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("SLUICE_LOG", "info,librdkafka=warn")
            .env("SLUICE_TELEMETRY__HTTP_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("spawn sluice");
        Sluice {
            child,
            log,
            config,
            _dir: dir,
        }
    }

    /// SIGKILLs the process, which must still be running: a kill of a
    /// process that had already exited (crashed, or stopped by itself)
    /// would interrupt nothing, so it fails the test.
    pub fn kill9(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("sluice exited ({status}) before the kill; log:\n{}", self.log_text());
        }
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "killed by SIGKILL, not exited by itself ({status}); log:\n{}",
            self.log_text()
        );
    }

    pub fn sigterm(&self) {
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address its telemetry HTTP server logged it listens on, once it has.
    pub fn http_addr(&self) -> Option<String> {
        let log = self.log_text();
        let line = log.lines().find(|l| l.contains("serving /metrics"))?;
        let at = line.find("addr=")? + "addr=".len();
        Some(line[at..].split_whitespace().next()?.to_owned())
    }

    /// `GET /status` as JSON; `None` while the server is not up.
    pub fn status(&self) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let addr = self.http_addr()?;
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    }

    /// The counter `name` (`consumed`, `written`, ...) of pipeline `pipeline` in `/status`.
    pub fn status_counter(&self, pipeline: &str, name: &str) -> Option<u64> {
        let status = self.status()?;
        status["pipelines"].as_array()?.iter().find(|p| p["name"] == pipeline)?["counters"][name].as_u64()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1 on `addr`: the status code and the body;
/// `None` while nothing listens.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A config for one pipeline from `topic` into `table`, with test-friendly timings.
pub fn config(services: &Services, group: &str, topic: &str, table: &str, columns: &str, extra: &str) -> String {
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
name = "p"
topics = ["{topic}"]
table = "{table}"
flush_interval = "100ms"
{extra}

[pipelines.columns]
{columns}
"#,
        brokers = services.brokers,
        url = services.database_url,
    )
}

/// Polls `probe` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits up to `timeout` for `table` to hold at least `rows` rows; fails
/// with the count and `log()` (the sluice log(s) worth reading) otherwise.
pub async fn await_rows(pool: &PgPool, table: &str, rows: u64, timeout: Duration, log: impl Fn() -> String) {
    let landed = eventually(timeout, || async { count(pool, table).await >= rows as i64 }).await;
    assert!(
        landed,
        "only {} of {rows} rows in {table}; log:\n{}",
        count(pool, table).await,
        log()
    );
}

/// Rows in `table`; 0 while it does not exist (sluice may create it).
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    match sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
    {
        Ok(n) => n,
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => 0,
        Err(err) => panic!("count {table}: {err}"),
    }
}

/// Asserts that `table` (with `kafka_partition`, `kafka_offset` columns)
/// holds every (partition, offset) of `per_partition` records exactly once.
pub async fn assert_exactly_once(pool: &PgPool, table: &str, partitions: i32, total: u64) {
    let rows: Vec<(i32, i64, i64, i64, i64)> = sqlx::query_as(&format!(
        "SELECT kafka_partition, count(*), count(DISTINCT kafka_offset), min(kafka_offset), max(kafka_offset) \
         FROM {table} GROUP BY 1 ORDER BY 1"
    ))
    .fetch_all(pool)
    .await
    .expect("per-partition counts");
    let mut sum = 0;
    for (p, n, distinct, min, max) in &rows {
        assert_eq!(
            n, distinct,
            "partition {p}: {n} rows but {distinct} distinct offsets (duplicates)"
        );
        assert_eq!(*min, 0, "partition {p}: first offset");
        assert_eq!(*max, n - 1, "partition {p}: offsets 0..{n} with no gap");
        sum += n;
    }
    assert_eq!(rows.len() as i32, partitions, "every partition written");
    assert_eq!(sum as u64, total, "exactly {total} rows");
}

/// Stored next offsets for a group, by partition.
pub async fn stored_offsets(pool: &PgPool, group: &str, topic: &str) -> Vec<(i32, i64)> {
    sqlx::query_as("SELECT partition, next_offset FROM sluice.offsets WHERE group_id = $1 AND topic = $2 ORDER BY 1")
        .bind(group)
        .bind(topic)
        .fetch_all(pool)
        .await
        .expect("stored offsets")
}

/// Waits up to `timeout` until the offsets stored for `group` equal `ends`
/// (partition by partition, as [`produce`] returns them); fails with both
/// and `log()` otherwise.
///
/// This is what proves that no row is still on its way: rows commit in the
/// same transaction as the offsets that cover them, so once every
/// partition's stored offset is its end, every record has been written,
/// dead-lettered or dropped, and any further row would be a duplicate the
/// offsets cannot cover. Count the rows after this, exactly.
pub async fn await_stored_offsets(
    pool: &PgPool,
    group: &str,
    topic: &str,
    ends: &[(i32, i64)],
    timeout: Duration,
    log: impl Fn() -> String,
) {
    let covered = eventually(timeout, || async { stored_offsets(pool, group, topic).await == ends }).await;
    assert!(
        covered,
        "stored offsets {:?}, produced up to {ends:?}; log:\n{}",
        stored_offsets(pool, group, topic).await,
        log()
    );
}

/// The stored offsets once no flush of `group` is in flight: takes the
/// rows' locks (which a flush holds from its offset UPDATE to its COMMIT or
/// ROLLBACK), so a COMMIT a killed process had already sent has completed.
/// Only a partition's first flush (an INSERT) is not waited for.
pub async fn settled_offsets(pool: &PgPool, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let mut tx = pool.begin().await.expect("begin");
    let offsets = sqlx::query_as(
        "SELECT partition, next_offset FROM sluice.offsets WHERE group_id = $1 AND topic = $2 ORDER BY 1 FOR UPDATE",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(&mut *tx)
    .await
    .expect("stored offsets");
    tx.rollback().await.expect("rollback");
    offsets
}

pub fn order_payload(i: u64) -> String {
    format!(
        r#"{{"id":{i},"customer":{{"name":"customer-{}"}},"amount":"{}.{:02}","ts":{},"tags":["a","b"]}}"#,
        i % 97,
        i % 1000,
        i % 100,
        1_700_000_000_000u64 + i
    )
}

pub const ORDER_COLUMNS: &str = r#"
id = "/id"
customer = "/customer/name"
amount = "/amount"
ts = "/ts"
doc = "/"
kafka_partition = "@partition"
kafka_offset = "@offset"
"#;

/// A table for [`order_payload`] rows. No unique constraint on purpose: a
/// duplicate must show up as a duplicate, not as a stalled pipeline.
pub async fn create_orders_table(pool: &PgPool, table: &str) {
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint, customer text, amount numeric(12,2), ts timestamptz, doc jsonb, \
         kafka_partition int, kafka_offset bigint)"
    ))
    .execute(pool)
    .await
    .expect("create table");
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The value of `field=<number>` on the first log line containing `marker`.
pub fn log_number(log: &str, marker: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Holds an EXCLUSIVE lock on `table` until dropped or released (reads still work):
/// every write to it waits, as with a database that has stalled.
pub struct TableLock {
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
}

impl TableLock {
    pub async fn take(pool: &PgPool, table: &str) -> TableLock {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await
            .expect("lock");
        TableLock { tx: Some(tx) }
    }

    pub async fn release(mut self) {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await.expect("release lock");
        }
    }
}

// Database faults: a private cluster to restart and a proxy to blackhole.
// Used by `outage` (each fault on its own) and `chaos` (all of them mixed).

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A Postgres cluster of the test's own, on its own port, so the test can
/// restart it without disturbing the other tests' database.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// initdb + start; blocking (run it with `spawn_blocking`).
    pub fn start() -> PrivatePostgres {
        Self::start_with(|_| {})
    }

    /// initdb, then `configure` with the data directory (certificates,
    /// `postgresql.conf`, `pg_hba.conf`) before the first start; blocking.
    /// What `configure` writes there is handed to the `postgres` user.
    pub fn start_with(configure: impl FnOnce(&Path)) -> PrivatePostgres {
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("sluice_pg"));
        std::fs::create_dir_all(&dir).unwrap();
        // initdb refuses to run as root; the cluster belongs to `postgres`.
        let as_postgres = |args: &[&str]| {
            let status = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .stdout(Stdio::null())
                .status()
                .expect("runuser");
            assert!(status.success(), "{args:?}");
        };
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let data = dir.join("data");
        as_postgres(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]);
        configure(&data);
        Command::new("chown")
            .args(["-R", "postgres:postgres", data.to_str().unwrap()])
            .status()
            .unwrap();
        let pg = PrivatePostgres { dir, port };
        pg.ctl("start");
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the server's Unix socket (`local` lines of `pg_hba.conf`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// `host:port` of the server, for a proxy in front of it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.join("data");
        let log = self.dir.join("pg.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let status = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{PG_BIN}/pg_ctl"),
                action,
                "-w",
                "-m",
                "fast",
            ])
            .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-o", &opts])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl {action}");
    }

    /// Stops the server (fast shutdown: sessions are cut); blocking.
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Starts the stopped server again and waits until it accepts; blocking.
    pub fn resume(&self) {
        self.ctl("start");
    }

    /// Stops the server, keeps it down for `down`, starts it again: longer
    /// than the connect timeout, so the writer sees failed flushes rather
    /// than one slow connection attempt.
    pub fn restart(&self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.resume();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP proxy that can blackhole: connections are accepted but nothing is
/// forwarded either way (neither refused nor reset), as when a database host
/// drops off the network.
pub struct BlackholeProxy {
    pub addr: SocketAddr,
    forwarding: Arc<AtomicBool>,
}

impl BlackholeProxy {
    pub async fn start(upstream: String) -> BlackholeProxy {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), upstream).await
    }

    /// A proxy serving `listener`, bound earlier (connections made since
    /// waited in its backlog).
    pub async fn start_on(listener: std::net::TcpListener, upstream: String) -> BlackholeProxy {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let forwarding = Arc::new(AtomicBool::new(true));
        let on = forwarding.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let on = on.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, on.clone()), pump(sr, cw, on));
                });
            }
        });
        BlackholeProxy { addr, forwarding }
    }

    pub fn set_forwarding(&self, on: bool) {
        self.forwarding.store(on, Ordering::SeqCst);
    }
}

/// Copies while forwarding; while blackholed, reads and discards, so the
/// sender sees an open, silent connection.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, on: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    // Once a connection has been blackholed it stays dead, as a real one would.
    let mut dead = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dead |= !on.load(Ordering::SeqCst);
        if !dead && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
