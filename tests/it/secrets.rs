//! No secret ever shows: sluice runs with a secret in every place that
//! takes one — the Postgres URL's password (read from a file through
//! `SLUICE_POSTGRES__URL_FILE`, and used: password login over TLS), the
//! librdkafka `sasl.password` and `ssl.key.password` properties, the
//! schema registry's password (from `SLUICE_SCHEMA_REGISTRY__PASSWORD_FILE`,
//! and used: the registry demands basic auth), an OTLP header — and none
//! of them appears in its log at `debug` (sluice's own modules at
//! `trace`), `/status`, `/metrics`, the spans and metrics it exports over
//! OTLP, `sluice check` and `sluice migrate`, or its errors: a refused
//! password, a config file that does not parse on a secret's line.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::formats::{order, produce_spec, Registry, ORDER_V1};
use crate::harness::*;
use crate::telemetry::{flush_spans, int_attr, start_receiver};
use crate::tls::{Pki, TlsPostgres, PASSWORD, PASSWORD_ROLE};

const KAFKA_SASL_SECRET: &str = "kafka-sasl-Secr3t";
const KAFKA_KEY_SECRET: &str = "kafka-keypass-Secr3t";
const REGISTRY_USER: &str = "it-registry-user";
const REGISTRY_SECRET: &str = "registry-Secr3t";
const OTLP_SECRET: &str = "otlp-token-Secr3t";
const WRONG_PG_PASSWORD: &str = "wrong-pg-Secr3t";
/// Digits only: from the environment it reaches the config as an integer.
const NUMERIC_SECRET: &str = "90817263544";

const JSON_RECORDS: u64 = 200;
const AVRO_RECORDS: u64 = 50;

/// Every secret, and the forms it could leak in (the registry's basic-auth
/// header value).
fn secrets() -> Vec<String> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{REGISTRY_USER}:{REGISTRY_SECRET}"));
    [
        PASSWORD,
        KAFKA_SASL_SECRET,
        KAFKA_KEY_SECRET,
        REGISTRY_SECRET,
        OTLP_SECRET,
        WRONG_PG_PASSWORD,
        NUMERIC_SECRET,
        &basic,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Fails naming the first secret found in any of `texts` (name, text).
fn assert_no_secret(texts: &[(&str, &str)]) {
    for (name, text) in texts {
        assert!(!text.is_empty(), "{name}: nothing to look at");
        for secret in secrets() {
            if let Some(at) = text.find(&secret) {
                let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
                let to = (at + secret.len() + 200).min(text.len());
                panic!(
                    "{name} shows the secret {secret:?}:\n…{}…",
                    text.get(from..to).unwrap_or(text)
                );
            }
        }
    }
}

/// Runs `sluice <args> --config <config>` with `env`: its stdout and stderr.
fn sluice_cli(args: &[&str], config: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLUICE_CONFIG")
        .env("SLUICE_LOG", "debug,sluice=trace")
        .envs(env.iter().copied())
        .output()
        .expect("run sluice");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_show_in_logs_status_metrics_spans_or_errors() {
    let services = Services::from_env();
    let pki = Pki::new();
    let tls = TlsPostgres::start(&pki).await;
    let registry = Registry::start_with_auth(REGISTRY_USER, REGISTRY_SECRET);
    let (receiver, received) = start_receiver().await;

    let (json_topic, avro_topic, group) = (unique("sec_json"), unique("sec_avro"), unique("g"));
    let (json_table, avro_table) = (unique("sec_orders"), unique("sec_avro"));
    create_topic(&services.brokers, &json_topic, 2).await;
    create_topic(&services.brokers, &avro_topic, 2).await;
    create_orders_table(&tls.admin, &json_table).await;
    sqlx::query(&format!(
        "CREATE TABLE {avro_table} (id bigint, name text, kafka_partition int, kafka_offset bigint)"
    ))
    .execute(&tls.admin)
    .await
    .unwrap();
    let (brokers, t) = (services.brokers.clone(), json_topic.clone());
    let json_ends = tokio::task::spawn_blocking(move || produce(&brokers, &t, 2, 0..JSON_RECORDS, 0, order_payload))
        .await
        .unwrap();
    let spec = json!({
        "brokers": services.brokers,
        "topic": avro_topic,
        "registry": {"url": registry.url, "username": REGISTRY_USER, "password": REGISTRY_SECRET},
        "key": {"format": "string"},
        "value": {"format": "avro", "schema": ORDER_V1},
        "records": (0..AVRO_RECORDS)
            .map(|i| json!({"key": format!("key-{i}"), "value": order(i, false), "partition": (i % 2) as i32}))
            .collect::<Vec<_>>(),
    });
    tokio::task::spawn_blocking(move || produce_spec(&spec)).await.unwrap();
    let avro_ends: Ends = vec![(0, AVRO_RECORDS as i64 / 2), (1, AVRO_RECORDS as i64 / 2)];

    // The secrets that come from files.
    let secret_dir = tempfile::tempdir().unwrap();
    let url_file = secret_dir.path().join("postgres-url");
    std::fs::write(&url_file, format!("{}\n", tls.url(PASSWORD_ROLE, "localhost"))).unwrap();
    let registry_file = secret_dir.path().join("registry-password");
    std::fs::write(&registry_file, REGISTRY_SECRET).unwrap();
    let url_file = url_file.display().to_string();
    let registry_file = registry_file.display().to_string();

    let http = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let config = format!(
        r#"
shutdown_timeout = "10s"

[kafka]
brokers = "{brokers}"
group_id = "{group}"
session_timeout = "6s"

[kafka.properties]
"sasl.username" = "it-kafka-user"
"sasl.password" = "{KAFKA_SASL_SECRET}"
"ssl.key.password" = "{KAFKA_KEY_SECRET}"

[postgres]
sslmode = "verify-full"
ssl_root_cert = "{ca}"

[schema_registry]
url = "{registry_url}"
username = "{REGISTRY_USER}"

[telemetry]
otlp_endpoint = "http://{receiver}"
otlp_protocol = "http"
export_interval = "1s"
otlp_headers = {{ authorization = "Bearer {OTLP_SECRET}" }}

[[pipelines]]
name = "json"
topics = ["{json_topic}"]
table = "{json_table}"
flush_interval = "100ms"

[pipelines.columns]
{ORDER_COLUMNS}

[[pipelines]]
name = "avro"
topics = ["{avro_topic}"]
table = "{avro_table}"
flush_interval = "100ms"
value_format = "avro"
key_format = "string"

[pipelines.columns]
id = "/id"
name = "/name"
kafka_partition = "@partition"
kafka_offset = "@offset"
"#,
        brokers = services.brokers,
        ca = pki.toml("ca.pem"),
        registry_url = registry.url,
    );
    let secret_env = [
        ("SLUICE_POSTGRES__URL_FILE", url_file.as_str()),
        ("SLUICE_SCHEMA_REGISTRY__PASSWORD_FILE", registry_file.as_str()),
    ];
    let (_config_dir, config_path) = write_config(&config);

    // `migrate` and `check` first: both connect with every secret.
    let (code, migrate) = sluice_cli(&["migrate"], &config_path, &secret_env);
    assert_eq!(code, Some(0), "{migrate}");
    let (code, check) = sluice_cli(&["check"], &config_path, &secret_env);
    assert!(check.contains("check passed"), "{check}");
    assert_eq!(code, Some(0), "{check}");

    let mut env: Vec<(&str, &str)> = secret_env.to_vec();
    env.extend([
        ("SLUICE_LOG", "debug,sluice=trace"),
        ("SLUICE_TELEMETRY__HTTP_ADDR", http.as_str()),
    ]);
    let mut sluice = Sluice::start_with_env(&config, &env);
    for (topic, ends) in [(&json_topic, &json_ends), (&avro_topic, &avro_ends)] {
        await_stored_offsets(&tls.admin, &group, topic, ends, Duration::from_secs(120), || {
            sluice.log_text()
        })
        .await;
    }
    assert_exactly_once(&tls.admin, &json_table, 2, JSON_RECORDS).await;
    assert_exactly_once(&tls.admin, &avro_table, 2, AVRO_RECORDS).await;

    // Every row's flush span has been exported: what is scanned is the
    // whole of what sluice sent.
    let total = (JSON_RECORDS + AVRO_RECORDS) as i64;
    let span_rows = |r: &crate::telemetry::Received| -> i64 {
        flush_spans(r)
            .iter()
            .filter_map(|s| int_attr(&s.attributes, "rows"))
            .sum()
    };
    let exported = eventually(Duration::from_secs(30), || async {
        span_rows(&received.lock().unwrap()) == total
    })
    .await;
    assert!(
        exported,
        "flush spans cover {} of {total} rows",
        span_rows(&received.lock().unwrap())
    );
    let (status_code, status) = http_get(&http, "/status").await.expect("/status");
    assert_eq!(status_code, 200, "{status}");
    let (metrics_code, metrics) = http_get(&http, "/metrics").await.expect("/metrics");
    assert_eq!(metrics_code, 200);
    sluice.sigterm();
    assert_eq!(
        sluice.wait_timeout(Duration::from_secs(30)).and_then(|s| s.code()),
        Some(0),
        "{}",
        sluice.log_text()
    );
    let (traces, otlp_metrics, authorization) = {
        let r = received.lock().unwrap();
        (
            format!("{:?}", r.traces),
            format!("{:?}", r.metrics),
            r.authorization.clone(),
        )
    };
    // The header did reach the collector, as a header: it was in use.
    assert!(
        !authorization.is_empty() && authorization.iter().all(|a| *a == format!("Bearer {OTLP_SECRET}")),
        "{authorization:?}"
    );
    // The log is verbose enough to be worth scanning: the config was read,
    // TLS handshakes and Postgres statements shown.
    let log = sluice.log_text();
    for shown in ["DEBUG", "sqlx::query", "rustls::client"] {
        assert!(log.contains(shown), "the log has no {shown} lines:\n{log}");
    }

    // Errors: a refused password, and a config that does not parse on the
    // line of a secret, and a digits-only password from the environment.
    let wrong_url = tls.url(PASSWORD_ROLE, "localhost").replace(PASSWORD, WRONG_PG_PASSWORD);
    let mut refused = Sluice::start_with_env(
        &config,
        &[
            ("SLUICE_POSTGRES__URL", wrong_url.as_str()),
            ("SLUICE_SCHEMA_REGISTRY__PASSWORD_FILE", registry_file.as_str()),
            ("SLUICE_LOG", "debug,sluice=trace"),
        ],
    );
    let code = refused.wait_timeout(Duration::from_secs(60)).and_then(|s| s.code());
    let refused_log = refused.log_text();
    assert_eq!(code, Some(1), "{refused_log}");
    assert!(
        refused_log.contains("password authentication failed for user") && refused_log.contains(PASSWORD_ROLE),
        "{refused_log}"
    );
    let broken = config.replace(
        &format!("\"sasl.password\" = \"{KAFKA_SASL_SECRET}\""),
        &format!("\"sasl.password\" = \"{KAFKA_SASL_SECRET}"),
    );
    let (_broken_dir, broken_path) = write_config(&broken);
    let (code, parse_error) = sluice_cli(&["check"], &broken_path, &secret_env);
    assert_eq!(code, Some(2), "{parse_error}");
    assert!(parse_error.contains("line 11"), "{parse_error}");
    let (code, numeric) = sluice_cli(
        &["check"],
        &config_path,
        &[
            ("SLUICE_POSTGRES__URL_FILE", url_file.as_str()),
            ("SLUICE_SCHEMA_REGISTRY__PASSWORD", NUMERIC_SECRET),
            ("SLUICE_POSTGRES__POOL_SIZE", "0"),
        ],
    );
    assert_eq!(code, Some(2), "{numeric}");
    assert!(
        numeric.contains("config key `postgres.pool_size`: must be at least 1"),
        "the password is taken, the next problem named: {numeric}"
    );

    assert_no_secret(&[
        ("the log", &log),
        ("/status", &status),
        ("/metrics", &metrics),
        ("the exported spans", &traces),
        ("the exported metrics", &otlp_metrics),
        ("sluice migrate", &migrate),
        ("sluice check", &check),
        ("the log of a refused login", &refused_log),
        ("a config parse error", &parse_error),
        ("a config error with a numeric password", &numeric),
    ]);
}
