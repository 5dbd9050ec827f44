//! Layering, error key paths and validation, through figment's `Jail`
//! (a temporary working directory and a restored environment per test,
//! serialised by a global lock because the environment is process-wide).

// figment's `Jail` closures must return `figment::Result`, whose error is large.
#![allow(clippy::result_large_err)]

use std::path::Path;

use figment::Jail;

use super::*;
use crate::mapping::ColumnSource;

const FILE: &str = "sluice.toml";

/// One valid pipeline; tests append or replace keys.
const MINIMAL: &str = r#"
[[pipelines]]
name = "orders"
topics = ["orders"]
table = "orders"
columns = { id = "/id" }
"#;

/// Runs `f` in a jail with no ambient `SLUICE_*` (or any other) variables.
fn jail(f: impl FnOnce(&mut Jail) -> figment::Result<()>) {
    Jail::expect_with(|jail| {
        jail.clear_env();
        f(jail)
    });
}

fn load(jail: &Jail, toml: &str) -> Result<Config, ConfigError> {
    jail.create_file(FILE, toml).expect("write config file");
    Config::load(Some(Path::new(FILE)))
}

fn load_err(jail: &Jail, toml: &str) -> ConfigError {
    match load(jail, toml) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(err) => err,
    }
}

fn columns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn valid() -> Config {
    Config {
        kafka: KafkaConfig::default(),
        postgres: PostgresConfig::default(),
        shutdown_timeout: default_shutdown_timeout(),
        startup_timeout: default_startup_timeout(),
        pipelines: vec![PipelineConfig::new(
            "orders",
            vec!["orders".into()],
            "orders",
            columns(&[("id", "/id")]),
        )],
        telemetry: TelemetryConfig::default(),
        breaker: BreakerConfig::default(),
        schema_registry: Default::default(),
    }
}

/// The key and message of a validation failure of `config`.
fn invalid(config: &Config) -> ConfigError {
    config.validate().expect_err("expected a validation error")
}

#[test]
fn defaults_fill_everything_but_pipelines() {
    jail(|jail| {
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.kafka, KafkaConfig::default());
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.kafka.group_id, "sluice");
        assert_eq!(config.kafka.auto_offset_reset, OffsetReset::Earliest);
        assert_eq!(config.kafka.session_timeout, Duration::from_secs(10));
        assert!(config.kafka.properties.is_empty());
        assert_eq!(config.postgres.url, "postgres://postgres@127.0.0.1:5432/postgres");
        assert_eq!(config.postgres.pool_size, 4);
        assert_eq!(config.postgres.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(30));
        let p = &config.pipelines[0];
        assert_eq!(p.batch_size, 10_000);
        assert_eq!(p.batch_bytes, ByteSize(8 << 20));
        assert_eq!(p.flush_interval, Duration::from_millis(5));
        assert_eq!(p.max_buffer_records, 100_000);
        assert_eq!(p.max_buffer_bytes, ByteSize(64 << 20));
        assert_eq!(p.high_watermark, 0.8);
        assert_eq!(p.low_watermark, 0.5);
        assert_eq!(p, &valid().pipelines[0]);
        Ok(())
    });
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    jail(|jail| {
        jail.create_file(
            FILE,
            &format!(
                r#"
                shutdown_timeout = "5s"
                [kafka]
                brokers = "file:9092"
                group_id = "from-file"
                auto_offset_reset = "latest"
                [kafka.properties]
                "client.id" = "file-client"
                "statistics.interval.ms" = 5000
                [postgres]
                url = "postgres://file@db/file"
                pool_size = 2
                {MINIMAL}
                batch_bytes = "1MiB"
                max_buffer_bytes = 16777216
                "#
            ),
        )?;
        jail.set_env("SLUICE_POSTGRES__URL", "postgres://env:pw@db/env");
        jail.set_env("SLUICE_KAFKA__BROKERS", "env1:9092,env2:9092");
        jail.set_env("SLUICE_KAFKA__GROUP_ID", "42");
        jail.set_env("SLUICE_POSTGRES__POOL_SIZE", "8");
        jail.set_env("SLUICE_KAFKA__PROPERTIES__CLIENT_ID", "env-client");
        jail.set_env("SLUICE_KAFKA__PROPERTIES__SECURITY.PROTOCOL", "SSL");
        jail.set_env("SLUICE_KAFKA__SESSION_TIMEOUT", "6s");

        let config = Config::load(Some(Path::new(FILE))).unwrap();
        // Environment beats file.
        assert_eq!(config.postgres.url, "postgres://env:pw@db/env");
        assert_eq!(config.postgres.pool_size, 8);
        assert_eq!(config.kafka.brokers, "env1:9092,env2:9092");
        // A numeric-looking variable is still a string key's text.
        assert_eq!(config.kafka.group_id, "42");
        assert_eq!(config.kafka.session_timeout, Duration::from_secs(6));
        // File beats defaults, and values the environment does not touch stay.
        assert_eq!(config.kafka.auto_offset_reset, OffsetReset::Latest);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.postgres.connect_timeout, Duration::from_secs(10));
        // Properties merge per property name across file and environment.
        let props = &config.kafka.properties;
        assert_eq!(props["client.id"], "env-client");
        assert_eq!(props["statistics.interval.ms"], "5000");
        assert_eq!(props["security.protocol"], "SSL");
        assert_eq!(props.len(), 3);
        // Nested pipeline values come from the file.
        let p = &config.pipelines[0];
        assert_eq!(p.name, "orders");
        assert_eq!(p.columns, columns(&[("id", "/id")]));
        assert_eq!(p.batch_bytes, ByteSize::mib(1));
        assert_eq!(p.max_buffer_bytes, ByteSize::mib(16));
        assert_eq!(p.batch_size, 10_000);
        Ok(())
    });
}

#[test]
fn environment_overrides_defaults_the_file_leaves_alone() {
    jail(|jail| {
        jail.set_env("SLUICE_SHUTDOWN_TIMEOUT", "1m 30s");
        jail.set_env("SLUICE_KAFKA__AUTO_OFFSET_RESET", "latest");
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(config.kafka.auto_offset_reset, OffsetReset::Latest);
        Ok(())
    });
}

#[test]
fn tooling_variables_are_not_config_keys() {
    jail(|jail| {
        jail.set_env("SLUICE_CONFIG", FILE);
        jail.set_env("SLUICE_LOG", "sluice=debug");
        jail.set_env("SLUICE_LOG_FORMAT", "json");
        // Exported by scripts/services.sh and inherited by spawned processes.
        jail.set_env("SLUICE_KAFKA_BROKERS", "127.0.0.1:9092");
        jail.set_env("SLUICE_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1/postgres");
        jail.set_env("SLUICE_TOOLS_DIR", "/tmp/tools");
        jail.set_env("SLUICE_SERVICES_TIMEOUT", "30");
        jail.set_env("SLUICE_BIN", "/tmp/target/debug/sluice");
        jail.set_env("SLUICE_QUICKSTART_COUNT", "10000");
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.kafka, KafkaConfig::default());
        Ok(())
    });
}

#[test]
fn unknown_top_level_key_is_named() {
    jail(|jail| {
        let err = load_err(jail, &format!("shutdown_timeuot = \"5s\"\n{MINIMAL}"));
        assert_eq!(err.key, "shutdown_timeuot");
        assert!(
            err.message.starts_with(
                "unknown key; expected one of: kafka, postgres, shutdown_timeout, startup_timeout, pipelines"
            ),
            "{err}"
        );
        assert!(err.message.contains(FILE), "names the file: {err}");
        Ok(())
    });
}

#[test]
fn unknown_nested_key_is_named() {
    jail(|jail| {
        let err = load_err(jail, &MINIMAL.replace("columns =", "colums ="));
        // Missing `columns` and unknown `colums`: either is a precise key;
        // serde reports the unknown one first as it reads the table.
        assert_eq!(err.key, "pipelines[0].colums", "{err}");
        assert!(
            err.message
                .contains("unknown key; expected one of: name, topics, table, columns"),
            "{err}"
        );

        let err = load_err(jail, &format!("[postgres]\npool_sise = 3\n{MINIMAL}"));
        assert_eq!(err.key, "postgres.pool_sise", "{err}");
        Ok(())
    });
}

#[test]
fn unknown_environment_key_names_the_variable() {
    jail(|jail| {
        jail.set_env("SLUICE_KAFKA__BROKERZ", "x:9092");
        let err = load_err(jail, MINIMAL);
        assert_eq!(err.key, "kafka.brokerz", "{err}");
        assert!(
            err.message.contains("environment variable SLUICE_KAFKA__BROKERZ"),
            "{err}"
        );

        jail.clear_env();
        jail.set_env("SLUICE_KAFAK__BROKERS", "x:9092");
        let err = load_err(jail, MINIMAL);
        assert_eq!(err.key, "kafak", "{err}");
        assert!(err.message.contains("environment variable SLUICE_KAFAK"), "{err}");
        Ok(())
    });
}

#[test]
fn wrong_type_names_key_expected_and_found() {
    jail(|jail| {
        let err = load_err(jail, &format!("{MINIMAL}batch_size = \"ten\"\n"));
        assert_eq!(err.key, "pipelines[0].batch_size");
        assert!(
            err.message
                .starts_with(r#"expected an unsigned integer, found string "ten""#),
            "{err}"
        );
        assert!(err.message.contains(FILE), "{err}");

        let err = load_err(jail, &format!("{MINIMAL}flush_interval = 200\n"));
        assert_eq!(err.key, "pipelines[0].flush_interval");
        assert!(err.message.starts_with("expected a duration"), "{err}");

        let err = load_err(jail, &format!("{MINIMAL}batch_bytes = \"8 MiBs\"\n"));
        assert_eq!(err.key, "pipelines[0].batch_bytes");
        assert!(err.message.contains("\"8 MiBs\""), "{err}");

        let err = load_err(jail, &format!("[kafka]\nauto_offset_reset = \"smallest\"\n{MINIMAL}"));
        assert_eq!(err.key, "kafka.auto_offset_reset");
        assert!(
            err.message
                .starts_with(r#"expected one of: earliest, latest; found "smallest""#),
            "{err}"
        );

        let err = load_err(jail, &MINIMAL.replace(r#"id = "/id""#, "id = 7"));
        assert_eq!(err.key, "pipelines[0].columns.id");

        jail.set_env("SLUICE_POSTGRES__POOL_SIZE", "many");
        let err = load_err(jail, MINIMAL);
        assert_eq!(err.key, "postgres.pool_size");
        assert!(err.message.contains(r#"found string "many""#), "{err}");
        assert!(
            err.message.contains("environment variable SLUICE_POSTGRES__POOL_SIZE"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn missing_required_keys_are_named() {
    jail(|jail| {
        let err = load_err(jail, "");
        assert_eq!(err.key, "pipelines");
        assert_eq!(err.message, "missing; this key is required");

        let err = load_err(jail, &MINIMAL.replace("table = \"orders\"\n", ""));
        assert_eq!(err.key, "pipelines[0].table", "{err}");
        assert!(err.message.starts_with("missing; this key is required"), "{err}");

        let err = load_err(jail, "pipelines = []");
        assert_eq!(err.key, "pipelines");
        assert!(err.message.starts_with("at least one pipeline is required"), "{err}");
        Ok(())
    });
}

#[test]
fn explicit_missing_file_is_an_error_naming_the_path() {
    jail(|_| {
        let err = Config::load(Some(Path::new("nope/sluice.toml"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config: cannot read config file nope/sluice.toml"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn toml_syntax_error_names_the_file() {
    jail(|jail| {
        let err = load_err(jail, "pipelines = [");
        assert_eq!(err.key, "");
        assert!(err.message.contains(FILE), "{err}");
        Ok(())
    });
}

#[test]
fn validation_errors_say_where_the_value_came_from() {
    jail(|jail| {
        let err = load_err(jail, &format!("{MINIMAL}low_watermark = 0.9\n"));
        assert_eq!(err.key, "pipelines[0].low_watermark");
        assert!(err.message.ends_with(&format!("(from file {FILE})")), "{err}");

        jail.set_env("SLUICE_KAFKA__PROPERTIES__ENABLE_AUTO_COMMIT", "true");
        let err = load_err(jail, MINIMAL);
        assert_eq!(err.key, r#"kafka.properties."enable.auto.commit""#);
        assert!(
            err.message
                .contains("environment variable SLUICE_KAFKA__PROPERTIES__ENABLE_AUTO_COMMIT"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn watermarks_must_satisfy_zero_below_low_below_high_up_to_one() {
    let with = |low: f64, high: f64| {
        let mut c = valid();
        c.pipelines[0].low_watermark = low;
        c.pipelines[0].high_watermark = high;
        c
    };
    assert!(with(0.5, 0.8).validate().is_ok());
    assert!(with(0.01, 1.0).validate().is_ok());
    for (low, high, key) in [
        (0.8, 0.8, "low_watermark"),
        (0.9, 0.8, "low_watermark"),
        (0.5, 1.1, "high_watermark"),
        (0.0, 0.8, "low_watermark"),
        (-0.1, 0.8, "low_watermark"),
        (0.5, 0.0, "high_watermark"),
        (f64::NAN, 0.8, "low_watermark"),
        (0.5, f64::NAN, "high_watermark"),
    ] {
        let err = invalid(&with(low, high));
        assert_eq!(err.key, format!("pipelines[0].{key}"), "low {low}, high {high}: {err}");
    }
}

#[test]
fn a_topic_feeds_one_pipeline() {
    let mut c = valid();
    let mut second = PipelineConfig::new(
        "audit",
        vec!["audit".into(), "orders".into()],
        "audit",
        columns(&[("doc", "/")]),
    );
    c.pipelines.push(second.clone());
    let err = invalid(&c);
    assert_eq!(err.key, "pipelines[1].topics[1]");
    assert!(
        err.message
            .contains(r#"already feeds pipeline "orders" (pipelines[0])"#),
        "{err}"
    );

    second.topics = vec!["audit".into(), "audit".into()];
    c.pipelines[1] = second;
    assert_eq!(invalid(&c).key, "pipelines[1].topics[1]");
}

#[test]
fn pipeline_names_are_unique_and_plain() {
    let mut c = valid();
    c.pipelines.push(PipelineConfig::new(
        "orders",
        vec!["b".into()],
        "b",
        columns(&[("doc", "/")]),
    ));
    let err = invalid(&c);
    assert_eq!(err.key, "pipelines[1].name");
    assert!(err.message.contains("already used by pipelines[0]"), "{err}");

    for bad in ["", "two words", "dots.not.allowed", "ümlaut"] {
        let mut c = valid();
        c.pipelines[0].name = bad.into();
        assert_eq!(invalid(&c).key, "pipelines[0].name", "{bad:?}");
    }
}

#[test]
fn bad_column_spec_names_the_column() {
    jail(|jail| {
        let err = load_err(
            jail,
            &MINIMAL.replace(r#"id = "/id""#, r#"id = "/id", amount = "amount""#),
        );
        assert_eq!(err.key, "pipelines[0].columns.amount");
        assert!(err.message.contains("JSON pointer"), "{err}");

        let err = load_err(
            jail,
            &MINIMAL.replace(r#"id = "/id""#, r#"id = "/id", "odd name" = "@nope""#),
        );
        assert_eq!(err.key, r#"pipelines[0].columns."odd name""#);
        Ok(())
    });
}

#[test]
fn other_pipeline_rules() {
    type Edit = fn(&mut PipelineConfig);
    let cases: &[(&str, Edit)] = &[
        ("topics", |p| p.topics.clear()),
        ("topics[0]", |p| p.topics = vec!["^orders(".into()]),
        ("table", |p| p.table = "{other}".into()),
        ("column_types.id", |p| {
            p.column_types.insert("id".into(), "point".into());
        }),
        ("column_types.nope", |p| {
            p.column_types.insert("nope".into(), "text".into());
        }),
        ("version", |p| p.version = Some("id".into())),
        ("topics[0]", |p| p.topics = vec!["".into()]),
        ("table", |p| p.table = "a.b.c".into()),
        ("table", |p| p.table = ".orders".into()),
        ("table", |p| p.table = "x".repeat(64)),
        ("columns", |p| p.columns.clear()),
        ("columns.\"\"", |p| {
            p.columns.insert(String::new(), "/".into());
        }),
        ("batch_size", |p| p.batch_size = 0),
        ("batch_bytes", |p| p.batch_bytes = ByteSize(1023)),
        ("flush_interval", |p| p.flush_interval = Duration::ZERO),
        ("max_buffer_records", |p| p.max_buffer_records = p.batch_size - 1),
        ("max_buffer_bytes", |p| {
            p.max_buffer_bytes = ByteSize(p.batch_bytes.bytes() - 1)
        }),
        ("max_record_bytes", |p| p.max_record_bytes = ByteSize(1023)),
        ("max_record_bytes", |p| {
            p.max_record_bytes = ByteSize(p.max_buffer_bytes.bytes() / 4 + 1)
        }),
        ("errors.dlq_topic", |p| p.errors.dlq_topic = Some("bad topic".into())),
    ];
    for (key, edit) in cases {
        let mut c = valid();
        edit(&mut c.pipelines[0]);
        assert_eq!(invalid(&c).key, format!("pipelines[0].{key}"));
    }
    // Boundaries that are allowed.
    let mut c = valid();
    let p = &mut c.pipelines[0];
    p.batch_bytes = ByteSize::kib(1);
    p.max_buffer_bytes = ByteSize::kib(4);
    p.max_record_bytes = ByteSize::kib(1);
    p.batch_size = 1;
    p.max_buffer_records = 1;
    p.table = "x".repeat(63);
    c.validate().unwrap();
    // Patterns, per-topic tables and column types.
    let mut c = valid();
    let p = &mut c.pipelines[0];
    p.topics = vec!["^orders\\..*".into(), "payments".into()];
    p.table = "raw.{topic}".into();
    p.column_types.insert("id".into(), "numeric(12,2)".into());
    c.validate().unwrap();
    let p = &c.pipelines[0];
    assert!(p.table_per_topic());
    assert_eq!(
        p.table_for("orders.eu-west").unwrap(),
        ("raw".into(), "orders_eu_west".into())
    );
    assert!(p
        .table_for(&"t".repeat(64))
        .unwrap_err()
        .to_string()
        .contains("longer than 63 bytes"));
    assert_eq!(
        c.consumer_properties()["topic.metadata.refresh.interval.ms"],
        "30000",
        "patterns refresh metadata every 30 s"
    );
    // A pattern matching a dead-letter topic would read its own failures.
    let mut c = valid();
    c.pipelines[0].topics = vec!["^orders.*".into()];
    c.pipelines[0].errors.dlq_topic = Some("orders.dlq".into());
    assert_eq!(invalid(&c).key, "pipelines[0].errors.dlq_topic");
}

#[test]
fn kafka_and_postgres_rules() {
    type Edit = fn(&mut Config);
    let cases: &[(&str, Edit)] = &[
        ("kafka.brokers", |c| c.kafka.brokers = "".into()),
        ("kafka.brokers", |c| c.kafka.brokers = "a:9092,,b:9092".into()),
        ("kafka.group_id", |c| c.kafka.group_id = " ".into()),
        ("kafka.instance_id", |c| c.kafka.instance_id = Some(" ".into())),
        ("kafka.session_timeout", |c| c.kafka.session_timeout = Duration::ZERO),
        ("kafka.session_timeout", |c| {
            c.kafka.session_timeout = Duration::from_secs(3601)
        }),
        ("postgres.url", |c| c.postgres.url = "mysql://root@db/x".into()),
        ("postgres.url", |c| c.postgres.url = "host=db password=secret".into()),
        ("postgres.pool_size", |c| c.postgres.pool_size = 0),
        ("postgres.connect_timeout", |c| {
            c.postgres.connect_timeout = Duration::ZERO
        }),
    ];
    for (key, edit) in cases {
        let mut c = valid();
        edit(&mut c);
        let err = invalid(&c);
        assert_eq!(err.key, *key);
        assert!(!err.message.contains("secret"), "never echo a URL: {err}");
    }
}

#[test]
fn refused_properties_name_the_property_and_the_alternative() {
    let cases = [
        ("enable.auto.commit", "true", "after each Postgres transaction"),
        ("auto.commit.enable", "true", "after each Postgres transaction"),
        ("enable.auto.offset.store", "true", "owns offset storage"),
        ("group.id", "g", "kafka.group_id"),
        ("group.instance.id", "pod-7", "kafka.instance_id"),
        ("bootstrap.servers", "b:9092", "kafka.brokers"),
        ("metadata.broker.list", "b:9092", "kafka.brokers"),
        ("auto.offset.reset", "latest", "kafka.auto_offset_reset"),
        ("session.timeout.ms", "6000", "kafka.session_timeout"),
        (
            "partition.assignment.strategy",
            "roundrobin",
            "set kafka.rebalance_protocol = \"eager\"",
        ),
        (
            "partition.assignment.strategy",
            "range,cooperative-sticky",
            "set kafka.rebalance_protocol = \"eager\"",
        ),
        ("group.protocol", "consumer", "KIP-848"),
        ("enable.partition.eof", "true", "EOF"),
        ("queued.max.messages.kbytes", "1024", "kafka.prefetch_bytes"),
        ("fetch.max.bytes", "1048576", "kafka.prefetch_bytes"),
        ("max.partition.fetch.bytes", "1048576", "kafka.prefetch_bytes"),
        ("queued.min.messages", "10", "kafka.prefetch_bytes"),
    ];
    for (name, value, reason) in cases {
        let mut c = valid();
        c.kafka.properties.insert(name.into(), value.into());
        let err = invalid(&c);
        assert_eq!(err.key, format!("kafka.properties.\"{name}\""));
        assert!(err.message.starts_with("refused: "), "{err}");
        assert!(err.message.contains(reason), "{name}: {err}");
    }
    let allowed = [
        ("auto.commit.interval.ms", "1000"),
        ("isolation.level", "read_uncommitted"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("group.protocol", "classic"),
        ("security.protocol", "SASL_SSL"),
        ("sasl.password", "hunter2"),
        ("client.id", "me"),
        ("statistics.interval.ms", "5000"),
    ];
    let mut c = valid();
    for (name, value) in allowed {
        c.kafka.properties.insert(name.into(), value.into());
    }
    c.validate().unwrap();
}

/// The strategy property must go with `kafka.rebalance_protocol`:
/// librdkafka cannot mix cooperative and eager strategies in one list, nor
/// can the members of one group.
#[test]
fn the_assignment_strategy_goes_with_the_rebalance_protocol() {
    let mut c = valid();
    c.kafka.rebalance_protocol = RebalanceProtocol::Eager;
    for ok in ["range", "roundrobin", "range,roundrobin"] {
        c.kafka
            .properties
            .insert("partition.assignment.strategy".into(), ok.into());
        c.validate().unwrap();
    }
    for bad in ["cooperative-sticky", "range,cooperative-sticky"] {
        c.kafka
            .properties
            .insert("partition.assignment.strategy".into(), bad.into());
        let err = invalid(&c);
        assert_eq!(err.key, "kafka.properties.\"partition.assignment.strategy\"");
        assert!(
            err.message.contains("set kafka.rebalance_protocol = \"cooperative\""),
            "{err}"
        );
    }
}

#[test]
fn the_revoke_timeout_is_shorter_than_the_session_timeout() {
    let mut c = valid();
    assert_eq!(
        c.kafka.revoke_timeout(),
        Duration::from_secs(5),
        "half the 10 s session timeout"
    );
    c.kafka.session_timeout = Duration::from_secs(30);
    assert_eq!(c.kafka.revoke_timeout(), Duration::from_secs(15));
    c.kafka.revoke_timeout = Some(Duration::from_secs(29));
    c.validate().unwrap();
    assert_eq!(c.kafka.revoke_timeout(), Duration::from_secs(29));
    for bad in [Duration::from_secs(30), Duration::from_secs(31), Duration::ZERO] {
        c.kafka.revoke_timeout = Some(bad);
        let err = invalid(&c);
        assert_eq!(err.key, "kafka.revoke_timeout");
        assert!(err.message.contains("less than kafka.session_timeout (30s)"), "{err}");
    }
    // The revoke runs inside the poll loop: max.poll.interval.ms must outlast it.
    c.kafka.revoke_timeout = Some(Duration::from_secs(20));
    c.kafka.properties.insert("max.poll.interval.ms".into(), "20000".into());
    let err = invalid(&c);
    assert_eq!(err.key, "kafka.properties.\"max.poll.interval.ms\"");
    assert!(err.message.contains("more than kafka.revoke_timeout (20s)"), "{err}");
    c.kafka.properties.insert("max.poll.interval.ms".into(), "20001".into());
    c.validate().unwrap();
}

#[test]
fn refused_property_from_file_is_named() {
    jail(|jail| {
        let err = load_err(
            jail,
            &format!("[kafka.properties]\n\"enable.auto.commit\" = true\n{MINIMAL}"),
        );
        assert_eq!(err.key, r#"kafka.properties."enable.auto.commit""#);
        assert!(
            err.to_string()
                .starts_with(r#"config key `kafka.properties."enable.auto.commit"`: refused: "#),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn dotted_property_names_may_be_written_as_nested_toml_keys() {
    jail(|jail| {
        let config = load(
            jail,
            &format!(
                "[kafka.properties]\nsecurity.protocol = \"SSL\"\n\"client.id\" = \"c\"\n\
                 enable.ssl.certificate.verification = false\n{MINIMAL}"
            ),
        )
        .unwrap();
        assert_eq!(
            config.kafka.properties,
            columns(&[
                ("client.id", "c"),
                ("enable.ssl.certificate.verification", "false"),
                ("security.protocol", "SSL"),
            ])
        );

        let err = load_err(
            jail,
            &format!("[kafka.properties]\nclient.id = \"a\"\n\"client.id\" = \"b\"\n{MINIMAL}"),
        );
        assert_eq!(err.key, r#"kafka.properties."client.id""#, "{err}");
        assert!(err.message.contains("given twice"), "{err}");

        let err = load_err(jail, &format!("[kafka.properties]\n\"client.id\" = [\"a\"]\n{MINIMAL}"));
        assert_eq!(err.key, r#"kafka.properties."client.id""#, "{err}");
        assert!(err.message.starts_with("expected a string, found an array"), "{err}");
        Ok(())
    });
}

#[test]
fn consumer_properties_set_what_sluice_owns() {
    let mut c = valid();
    c.kafka.properties.insert("client.id".into(), "me".into());
    let props = c.consumer_properties();
    let expect = [
        // sluice positions partitions itself; librdkafka's reset would only
        // ever move a stored offset outside the log, silently.
        ("auto.offset.reset", "error"),
        ("bootstrap.servers", "127.0.0.1:9092"),
        ("client.id", "me"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        // Half of the 16MiB default prefetch budget each for queue and fetch.
        ("fetch.max.bytes", "8388608"),
        ("fetch.queue.backoff.ms", "10"),
        ("group.id", "sluice"),
        ("max.partition.fetch.bytes", "1048576"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("queued.max.messages.kbytes", "8192"),
        ("session.timeout.ms", "10000"),
    ];
    assert_eq!(props, columns(&expect));

    c.kafka.rebalance_protocol = RebalanceProtocol::Eager;
    assert_eq!(
        c.consumer_properties()["partition.assignment.strategy"],
        "range,roundrobin"
    );
    c.kafka
        .properties
        .insert("partition.assignment.strategy".into(), "roundrobin".into());
    c.kafka.auto_offset_reset = OffsetReset::Latest;
    let props = c.consumer_properties();
    assert_eq!(props["partition.assignment.strategy"], "roundrobin");
    assert_eq!(
        props["auto.offset.reset"], "error",
        "whatever kafka.auto_offset_reset says"
    );

    // Even unvalidated, the protocol decides: never a mixed list.
    c.kafka
        .properties
        .insert("partition.assignment.strategy".into(), "cooperative-sticky".into());
    assert_eq!(
        c.consumer_properties()["partition.assignment.strategy"],
        "range,roundrobin"
    );
    c.kafka.rebalance_protocol = RebalanceProtocol::Cooperative;
    c.kafka
        .properties
        .insert("partition.assignment.strategy".into(), "range".into());
    assert_eq!(
        c.consumer_properties()["partition.assignment.strategy"],
        "cooperative-sticky"
    );

    // Static membership only when asked for.
    assert!(!c.consumer_properties().contains_key("group.instance.id"));
    c.kafka.instance_id = Some("pod-7".into());
    assert_eq!(c.consumer_properties()["group.instance.id"], "pod-7");
}

#[test]
fn redacted_url_hides_the_password() {
    let cases = [
        (
            "postgres://user:secret@host:5432/db",
            "postgres://user:***@host:5432/db",
        ),
        (
            "postgresql://user:s3cr%40t@host/db?sslmode=require",
            "postgresql://user:***@host/db?sslmode=require",
        ),
        ("postgres://user:p@ss/w?rd@host/db", "postgres://user:***@host/db"),
        ("postgres://user@host/db", "postgres://user@host/db"),
        ("postgres://host/db", "postgres://host/db"),
        (
            "postgres://host/db?user=u&password=secret&sslmode=disable",
            "postgres://host/db?user=u&password=***&sslmode=disable",
        ),
        // An '@' in the query hides too much rather than too little.
        ("postgres://u:secret@host/db?x=a@b", "postgres://u:***@b"),
        ("host=db password=secret", "***"),
    ];
    for (url, shown) in cases {
        let pg = PostgresConfig {
            url: url.into(),
            ..PostgresConfig::default()
        };
        assert_eq!(pg.redacted_url(), shown, "{url}");
        assert!(!format!("{pg:?}").contains("secret"), "{url}");
    }
}

#[test]
fn debug_of_config_shows_no_secrets() {
    let mut c = valid();
    c.postgres.url = "postgres://sluice:pg-secret-pw@db:5432/sluice".into();
    c.kafka
        .properties
        .insert("sasl.password".into(), "kafka-secret-pw".into());
    c.kafka
        .properties
        .insert("ssl.key.pem".into(), "-----BEGIN PRIVATE KEY-----".into());
    c.kafka.properties.insert("sasl.username".into(), "sluice-user".into());
    c.telemetry
        .otlp_headers
        .insert("authorization".into(), "Bearer otlp-secret-token".into());
    let shown = format!("{c:?}");
    assert!(!shown.contains("otlp-secret-token"), "{shown}");
    assert!(shown.contains("authorization"), "{shown}");
    assert!(!shown.contains("pg-secret-pw"), "{shown}");
    assert!(!shown.contains("kafka-secret-pw"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(shown.contains("postgres://sluice:***@db:5432/sluice"), "{shown}");
    assert!(shown.contains("sluice-user"), "non-secrets stay visible: {shown}");
    let pretty = format!("{c:#?}");
    assert!(!pretty.contains("pg-secret-pw") && !pretty.contains("kafka-secret-pw"));
}

#[test]
fn byte_sizes_deserialize_from_integers_and_strings() {
    jail(|jail| {
        let table = [
            ("1024", 1024),
            ("\"2048\"", 2048),
            ("\"64KiB\"", 64 << 10),
            ("\"64 MiB\"", 64 << 20),
            ("\"1GiB\"", 1 << 30),
            ("\"10kB\"", 10_000),
            ("\"10KB\"", 10_000),
            ("\"2mb\"", 2_000_000),
        ];
        for (toml, bytes) in table {
            let config = load(
                jail,
                &format!("{MINIMAL}batch_bytes = {toml}\nmax_buffer_bytes = \"4GiB\"\n"),
            )
            .unwrap();
            assert_eq!(config.pipelines[0].batch_bytes.bytes(), bytes, "{toml}");
        }
        let err = load_err(jail, &format!("{MINIMAL}batch_bytes = -1\n"));
        assert_eq!(err.key, "pipelines[0].batch_bytes");
        assert!(err.message.starts_with("expected a byte size"), "{err}");
        Ok(())
    });
}

#[test]
fn table_ref_defaults_the_schema() {
    let mut p = valid().pipelines.remove(0);
    assert_eq!(p.table_ref(), ("public".to_owned(), "orders".to_owned()));
    p.table = "sales.Orders".into();
    assert_eq!(p.table_ref(), ("sales".to_owned(), "Orders".to_owned()));
}

#[test]
fn column_sources_parse_every_spec() {
    let mut p = valid().pipelines.remove(0);
    p.columns = columns(&[("doc", "/"), ("id", "/id"), ("off", "@offset")]);
    let sources = p.column_sources();
    assert_eq!(
        sources,
        vec![
            ("doc".to_owned(), ColumnSource::Pointer(String::new())),
            ("id".to_owned(), ColumnSource::Pointer("/id".into())),
            ("off".to_owned(), ColumnSource::Offset),
        ]
    );
    assert_eq!(p.try_column_sources().unwrap(), sources);
    p.columns.insert("bad".into(), "bad".into());
    let err = p.try_column_sources().unwrap_err();
    assert_eq!(err.key, "columns.bad");
    assert!(
        err.message
            .starts_with("in pipeline \"orders\": expected a JSON pointer"),
        "{err}"
    );
}

#[test]
fn example_config_loads_validates_and_documents_the_defaults() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml"));
    jail(|_| {
        let config = Config::load(Some(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Every key the example sets to a default really is the default, so
        // the documentation cannot drift from the code.
        assert_eq!(config.kafka, KafkaConfig::default());
        assert_eq!(config.shutdown_timeout, default_shutdown_timeout());
        assert_eq!(config.startup_timeout, default_startup_timeout());
        assert_eq!(
            config.postgres,
            PostgresConfig {
                url: "postgres://postgres@127.0.0.1:5432/sluice_demo".into(),
                ..PostgresConfig::default()
            }
        );
        let expected = PipelineConfig::new(
            "orders",
            vec!["orders".into()],
            "public.orders",
            columns(&[
                ("amount", "/amount"),
                ("created_at", "/ts"),
                ("customer", "/customer/name"),
                ("doc", "/"),
                ("kafka_offset", "@offset"),
                ("order_id", "/id"),
            ]),
        );
        assert_eq!(config.pipelines, vec![expected]);
        assert_eq!(config.telemetry, TelemetryConfig::default());
        Ok(())
    });
}

#[test]
fn telemetry_defaults_file_and_environment() {
    jail(|jail| {
        let config = load(jail, MINIMAL).unwrap();
        let t = &config.telemetry;
        assert_eq!(t.http_addr, "127.0.0.1:9464");
        assert_eq!(t.http_socket_addr(), Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(t.otlp_endpoint, None);
        assert_eq!(t.otlp_protocol, None);
        assert!(t.otlp_headers.is_empty() && t.resource_attributes.is_empty());
        assert_eq!(t.service_name, None);
        assert_eq!(t.export_interval, Duration::from_secs(10));
        assert_eq!(t.lag_interval, Duration::from_secs(5));

        jail.set_env("SLUICE_TELEMETRY__OTLP_HEADERS__X_API_KEY", "env-key");
        jail.set_env("SLUICE_TELEMETRY__RESOURCE_ATTRIBUTES__SERVICE.NAMESPACE", "ingest");
        let config = load(
            jail,
            &format!(
                r#"
                [telemetry]
                http_addr = "off"
                otlp_endpoint = "http://collector:4318"
                otlp_protocol = "http/protobuf"
                export_interval = "2s"
                lag_interval = "1s"
                service_name = "orders-sink"
                [telemetry.otlp_headers]
                authorization = "Bearer t"
                [telemetry.resource_attributes]
                deployment.environment = "prod"
                "k8s.pod.name" = "sluice-0"
                replicas = 3
                {MINIMAL}
                "#
            ),
        )
        .unwrap();
        let t = &config.telemetry;
        assert_eq!(t.http_socket_addr(), None);
        assert_eq!(t.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!(t.otlp_protocol, Some(OtlpProtocol::Http));
        assert_eq!(t.export_interval, Duration::from_secs(2));
        assert_eq!(t.lag_interval, Duration::from_secs(1));
        assert_eq!(t.service_name.as_deref(), Some("orders-sink"));
        assert_eq!(t.otlp_headers["authorization"], "Bearer t");
        assert_eq!(t.otlp_headers["x_api_key"], "env-key");
        // Dotted names, nested or quoted, in the file or the environment.
        assert_eq!(t.resource_attributes["deployment.environment"], "prod");
        assert_eq!(t.resource_attributes["k8s.pod.name"], "sluice-0");
        assert_eq!(t.resource_attributes["replicas"], "3");
        assert_eq!(t.resource_attributes["service.namespace"], "ingest");
        Ok(())
    });
}

#[test]
fn telemetry_rules() {
    let with = |f: fn(&mut TelemetryConfig)| {
        let mut c = valid();
        f(&mut c.telemetry);
        c
    };
    assert!(with(|t| t.http_addr = String::new()).validate().is_ok());
    assert!(with(|t| t.otlp_endpoint = Some("https://otlp.example.com:443".into()))
        .validate()
        .is_ok());
    type Case = (fn(&mut TelemetryConfig), &'static str, &'static str);
    let cases: [Case; 8] = [
        (
            |t| t.http_addr = "localhost:9464".into(),
            "telemetry.http_addr",
            "expected host:port",
        ),
        (
            |t| t.http_addr = "9464".into(),
            "telemetry.http_addr",
            "expected host:port",
        ),
        (
            |t| t.otlp_endpoint = Some("collector:4317".into()),
            "telemetry.otlp_endpoint",
            "expected a URL",
        ),
        (
            |t| {
                t.otlp_endpoint = Some("https://c:4318".into());
                t.otlp_protocol = Some(OtlpProtocol::Http);
            },
            "telemetry.otlp_endpoint",
            "http:// endpoints only",
        ),
        (
            |t| t.export_interval = Duration::ZERO,
            "telemetry.export_interval",
            "greater than zero",
        ),
        (
            |t| t.lag_interval = Duration::ZERO,
            "telemetry.lag_interval",
            "greater than zero",
        ),
        (
            |t| {
                t.otlp_headers.insert("bad name".into(), "v".into());
            },
            r#"telemetry.otlp_headers."bad name""#,
            "header name",
        ),
        (
            |t| t.service_name = Some(" ".into()),
            "telemetry.service_name",
            "must not be empty",
        ),
    ];
    for (change, key, message) in cases {
        let err = invalid(&with(change));
        assert_eq!(err.key, key, "{err}");
        assert!(err.message.contains(message), "{err}");
    }
}

#[test]
fn upsert_mode_and_its_key() {
    jail(|jail| {
        let base = "[[pipelines]]\nname = \"orders\"\ntopics = [\"orders\"]\ntable = \"orders\"\n\
                    columns = { id = \"/id\", v = \"/v\" }\n";
        let config = load(jail, base).expect("insert is the default");
        assert_eq!(config.pipelines[0].mode, WriteMode::Insert);
        assert!(!config.pipelines[0].deletes_on_tombstone());

        let config = load(jail, &format!("{base}mode = \"upsert\"\nkey = [\"id\"]\n")).expect("upsert loads");
        assert_eq!(config.pipelines[0].mode, WriteMode::Upsert);
        assert_eq!(config.pipelines[0].key, vec!["id".to_owned()]);
        assert!(config.pipelines[0].deletes_on_tombstone(), "on by default");
        let config = load(
            jail,
            &format!("{base}mode = \"upsert\"\nkey = [\"id\"]\ndelete_on_tombstone = false\n"),
        )
        .expect("loads");
        assert!(!config.pipelines[0].deletes_on_tombstone());

        let err = load_err(jail, &format!("{base}mode = \"upsert\"\n"));
        assert_eq!(err.key, "pipelines[0].key", "{err}");
        assert!(err.message.contains("needs the key columns"), "{err}");
        let err = load_err(jail, &format!("{base}mode = \"upsert\"\nkey = [\"id\", \"nope\"]\n"));
        assert_eq!(err.key, "pipelines[0].key[1]", "{err}");
        assert!(err.message.contains("\"nope\" is not a mapped column"), "{err}");
        let err = load_err(jail, &format!("{base}mode = \"upsert\"\nkey = [\"id\", \"id\"]\n"));
        assert_eq!(err.key, "pipelines[0].key[1]", "{err}");
        let err = load_err(jail, &format!("{base}key = [\"id\"]\n"));
        assert_eq!(err.key, "pipelines[0].key", "{err}");
        assert!(err.message.contains("only used with mode = \"upsert\""), "{err}");
        let err = load_err(jail, &format!("{base}delete_on_tombstone = true\n"));
        assert_eq!(err.key, "pipelines[0].delete_on_tombstone", "{err}");
        let err = load_err(jail, &format!("{base}mode = \"merge\"\n"));
        assert_eq!(err.key, "pipelines[0].mode", "{err}");
        Ok(())
    });
}

#[test]
fn on_offset_out_of_range_defaults_to_stop_and_names_its_key() {
    jail(|jail| {
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.kafka.on_offset_out_of_range, OnOffsetOutOfRange::Stop);
        let config = load(
            jail,
            &format!("[kafka]\non_offset_out_of_range = \"latest\"\n{MINIMAL}"),
        )
        .unwrap();
        assert_eq!(config.kafka.on_offset_out_of_range, OnOffsetOutOfRange::Latest);
        let err = load_err(jail, &format!("[kafka]\non_offset_out_of_range = \"skip\"\n{MINIMAL}"));
        assert_eq!(err.key, "kafka.on_offset_out_of_range");
        assert!(
            err.message
                .starts_with(r#"expected one of: stop, earliest, latest; found "skip""#),
            "{err}"
        );
        jail.set_env("SLUICE_KAFKA__ON_OFFSET_OUT_OF_RANGE", "earliest");
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.kafka.on_offset_out_of_range, OnOffsetOutOfRange::Earliest);
        Ok(())
    });
}

/// An upsert pipeline from `topics` into `table`, optionally with a version.
fn upsert(name: &str, topics: &[&str], table: &str, version: Option<&str>) -> PipelineConfig {
    let mut p = PipelineConfig::new(
        name,
        topics.iter().map(|t| t.to_string()).collect(),
        table,
        columns(&[("id", "/id"), ("v", "/v"), ("w", "/w")]),
    );
    p.mode = WriteMode::Upsert;
    p.key = vec!["id".into()];
    p.version = version.map(str::to_owned);
    p
}

fn with_pipelines(pipelines: Vec<PipelineConfig>) -> Config {
    Config { pipelines, ..valid() }
}

#[test]
fn an_upsert_table_fed_from_several_topics_needs_a_version() {
    let why = "offsets order a key's records only within one partition, so an older record could \
               overwrite a newer one; set `version` to a column that orders them (a row is then only \
               replaced by a greater version)";
    let err = invalid(&with_pipelines(vec![upsert("p", &["a", "b"], "t", None)]));
    assert_eq!(err.key, "pipelines[0].version");
    assert_eq!(
        err.message,
        format!(
            "mode = \"upsert\" into table public.t from more than one topic (\"a\", \"b\") needs a version: \
             {why}, or give each topic a table of its own with {{topic}}"
        )
    );
    let err = invalid(&with_pipelines(vec![upsert("p", &["^orders\\..*"], "s.t", None)]));
    assert_eq!(err.key, "pipelines[0].version");
    assert_eq!(
        err.message,
        format!(
            "mode = \"upsert\" into table s.t from the topic pattern \"^orders\\\\..*\" (every topic it \
             matches) needs a version: {why}, or give each topic a table of its own with {{topic}}"
        )
    );
    // Two topic names that become the same `{topic}` table.
    let err = invalid(&with_pipelines(vec![upsert("p", &["a.b", "a_b"], "{topic}", None)]));
    assert_eq!(err.key, "pipelines[0].version");
    assert!(
        err.message
            .starts_with("mode = \"upsert\" into table public.a_b from more than one topic (\"a.b\", \"a_b\")"),
        "{err}"
    );

    // Fine: a version; one topic; a table per topic; insert mode.
    for ok in [
        upsert("p", &["a", "b"], "t", Some("v")),
        upsert("p", &["^orders\\..*"], "t", Some("v")),
        upsert("p", &["a"], "t", None),
        upsert("p", &["a", "b", "^c.*"], "{topic}", None),
        PipelineConfig::new("p", vec!["a".into(), "b".into()], "t", columns(&[("id", "/id")])),
    ] {
        with_pipelines(vec![ok.clone()])
            .validate()
            .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
    }
}

#[test]
fn two_upsert_pipelines_into_one_table_need_the_same_version() {
    let why = "offsets order a key's records only within one partition, so an older record could \
               overwrite a newer one; set `version` to a column that orders them (a row is then only \
               replaced by a greater version)";
    // Same table spelt two ways: `t` is `public.t`.
    let err = invalid(&with_pipelines(vec![
        upsert("p", &["a"], "t", Some("v")),
        upsert("q", &["b"], "public.t", None),
    ]));
    assert_eq!(err.key, "pipelines[1].version");
    assert_eq!(
        err.message,
        format!("pipelines \"p\", \"q\" upsert into the same table public.t; each needs a version: {why}")
    );
    let err = invalid(&with_pipelines(vec![
        upsert("p", &["a"], "t", None),
        upsert("q", &["b"], "t", Some("v")),
    ]));
    assert_eq!(err.key, "pipelines[0].version");
    // A `{topic}` table of one pipeline that is another's table.
    let err = invalid(&with_pipelines(vec![
        upsert("p", &["a"], "t", None),
        upsert("q", &["t"], "{topic}", None),
    ]));
    assert_eq!(err.key, "pipelines[0].version");
    let err = invalid(&with_pipelines(vec![
        upsert("p", &["a"], "t", Some("v")),
        upsert("q", &["b"], "t", Some("w")),
    ]));
    assert_eq!(err.key, "pipelines[1].version");
    assert_eq!(
        err.message,
        "pipelines \"p\", \"q\" upsert into the same table public.t, so they must order its rows by the same \
         version column: \"p\" has \"v\", \"q\" has \"w\""
    );

    with_pipelines(vec![
        upsert("p", &["a"], "t", Some("v")),
        upsert("q", &["b"], "t", Some("v")),
    ])
    .validate()
    .expect("the same version column");
    with_pipelines(vec![upsert("p", &["a"], "t", None), upsert("q", &["b"], "u", None)])
        .validate()
        .expect("different tables");
    // An insert pipeline into the same table is not an upsert ordering question.
    let mut insert = upsert("q", &["b"], "t", None);
    insert.mode = WriteMode::Insert;
    insert.key.clear();
    with_pipelines(vec![upsert("p", &["a"], "t", None), insert])
        .validate()
        .expect("insert and upsert");
}

#[test]
fn the_upsert_source_rule_names_the_key_in_a_loaded_file() {
    jail(|jail| {
        let toml = "[[pipelines]]\nname = \"orders\"\ntopics = [\"eu\", \"us\"]\ntable = \"orders\"\n\
                    columns = { id = \"/id\", v = \"/v\" }\nmode = \"upsert\"\nkey = [\"id\"]\n";
        let err = load_err(jail, toml);
        assert_eq!(err.key, "pipelines[0].version", "{err}");
        assert!(
            err.message.contains("from more than one topic (\"eu\", \"us\")"),
            "{err}"
        );
        load(jail, &format!("{toml}version = \"v\"\n")).expect("with a version");
        Ok(())
    });
}

/// `<VAR>_FILE` reads the value from a file (Kubernetes Secrets, systemd
/// credentials): the content, without its trailing newline, taken as text;
/// also for librdkafka properties. Errors name the variable and the path,
/// never the content.
#[test]
fn secrets_come_from_files_named_by_the_file_variables() {
    jail(|jail| {
        jail.create_file("db_url", "postgres://app:s3cret@db/app\n")?;
        jail.create_file("kafka_pw", "12345")?;
        jail.set_env("SLUICE_POSTGRES__URL_FILE", "db_url");
        jail.set_env("SLUICE_KAFKA__PROPERTIES__SASL_PASSWORD_FILE", "kafka_pw");
        let config = load(jail, MINIMAL).unwrap();
        assert_eq!(config.postgres.url, "postgres://app:s3cret@db/app");
        assert_eq!(config.kafka.properties["sasl.password"], "12345", "text, not a number");
        assert!(!format!("{config:?}").contains("s3cret"), "redacted in Debug");

        jail.set_env("SLUICE_POSTGRES__URL", "postgres://other@db/app");
        let err = load_err(jail, MINIMAL);
        assert!(
            err.to_string()
                .contains("SLUICE_POSTGRES__URL and SLUICE_POSTGRES__URL_FILE are both set"),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"), "{err}");
        Ok(())
    });
    jail(|jail| {
        jail.set_env("SLUICE_POSTGRES__URL_FILE", "missing");
        let err = load_err(jail, MINIMAL);
        assert!(
            err.to_string()
                .contains("SLUICE_POSTGRES__URL_FILE: cannot read the file \"missing\""),
            "{err}"
        );
        jail.create_file("empty", "\n")?;
        jail.set_env("SLUICE_POSTGRES__URL_FILE", "empty");
        let err = load_err(jail, MINIMAL);
        assert!(err.to_string().contains("the file \"empty\" is empty"), "{err}");
        Ok(())
    });
}

#[test]
fn formats_need_a_registry_and_columns_may_come_only_from_a_registered_schema() {
    let mut c = valid();
    c.pipelines[0].value_format = crate::format::Format::Avro;
    let e = invalid(&c);
    assert_eq!(
        e.to_string(),
        "config key `pipelines[0].value_format`: \"avro\" records name their schema in a Schema Registry: set schema_registry.url"
    );
    c.schema_registry.url = Some("http://registry:8081".into());
    c.validate().unwrap();
    // Columns omitted: taken from the Avro schema of the one topic.
    c.pipelines[0].columns.clear();
    assert!(c.pipelines[0].columns_from_schema());
    c.validate().unwrap();
    // ... or a Protobuf or JSON Schema one, or a Debezium Avro one.
    for format in [crate::format::Format::Protobuf, crate::format::Format::JsonSchema] {
        let mut other = c.clone();
        other.pipelines[0].value_format = format;
        assert!(other.pipelines[0].columns_from_schema());
        other.validate().unwrap();
    }
    let mut debezium = c.clone();
    debezium.pipelines[0].envelope = crate::format::Envelope::Debezium;
    debezium.pipelines[0].mode = WriteMode::Upsert;
    debezium.pipelines[0].key = vec!["id".into()];
    assert!(debezium.pipelines[0].columns_from_schema());
    debezium.validate().unwrap();
    // ... but not from a pattern, a table per topic, JSON, or Debezium's
    // JSON (its schema is in each event, not in a registry).
    for change in [
        (|p: &mut PipelineConfig| p.topics = vec!["^orders.*".into()]) as fn(&mut PipelineConfig),
        |p| p.table = "t_{topic}".into(),
        |p| p.value_format = crate::format::Format::Json,
        |p| {
            p.envelope = crate::format::Envelope::Debezium;
            p.mode = WriteMode::Upsert;
            p.key = vec!["id".into()];
            p.value_format = crate::format::Format::Json;
        },
    ] {
        let mut bad = c.clone();
        change(&mut bad.pipelines[0]);
        let e = invalid(&bad);
        assert!(
            e.to_string().starts_with("config key `pipelines[0].columns`: at least one column is required (they may be omitted only with value_format = \"avro\""),
            "{e}"
        );
    }
    // string and bytes are for keys; @source needs the envelope.
    let mut bad = valid();
    bad.pipelines[0].value_format = crate::format::Format::String;
    assert!(invalid(&bad).to_string().contains("string and bytes are for keys"));
    let mut bad = valid();
    bad.pipelines[0].columns.insert("lsn".into(), "@source/lsn".into());
    assert!(invalid(&bad)
        .to_string()
        .contains("@source columns need envelope = \"debezium\""));
    bad.pipelines[0].envelope = crate::format::Envelope::Debezium;
    assert!(invalid(&bad).to_string().contains("needs mode = \"upsert\""));
    // The password is never shown.
    let mut c = valid();
    c.schema_registry.username = Some("u".into());
    c.schema_registry.password = Some("s3cret".into());
    assert!(!format!("{c:?}").contains("s3cret"));
}

/// A config error never shows a secret's value: not a number where the
/// registry password goes (taken as text), not a TOML syntax error on the
/// line of a URL with a password, not a type error under a secret key.
#[test]
fn config_errors_never_show_a_secret() {
    const REGISTRY: &str = "\n[schema_registry]\nurl = \"http://registry:8081\"\nusername = \"u\"\n";
    jail(|jail| {
        // From the environment a digits-only password is an integer; it is
        // a password all the same.
        jail.set_env("SLUICE_SCHEMA_REGISTRY__PASSWORD", "982734651");
        let config = load(jail, &format!("{MINIMAL}{REGISTRY}")).unwrap();
        assert_eq!(config.schema_registry.password.as_deref(), Some("982734651"));
        Ok(())
    });
    jail(|jail| {
        // An unterminated string: the parser's message must not quote the line.
        let err = load_err(
            jail,
            &format!("[postgres]\nurl = \"postgres://app:pw-in-a-bad-line@db/app\n{MINIMAL}"),
        );
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(!err.to_string().contains("pw-in-a-bad-line"), "{err}");
        Ok(())
    });
    jail(|jail| {
        let err = load_err(jail, &format!("{MINIMAL}{REGISTRY}password = [\"arr-secret\"]\n"));
        assert_eq!(err.key, "schema_registry.password");
        assert!(!err.to_string().contains("arr-secret"), "{err}");
        Ok(())
    });
}

/// A client certificate needs its key and the reverse, each a file; the
/// error names the key that is missing or wrong.
#[test]
fn client_certificate_and_key_come_together() {
    jail(|jail| {
        jail.create_file("client.pem", "cert")?;
        jail.create_file("client.key", "key")?;
        let config = load(
            jail,
            &format!("[postgres]\nssl_cert = \"client.pem\"\nssl_key = \"client.key\"\n{MINIMAL}"),
        )
        .unwrap();
        assert_eq!(config.postgres.ssl_cert.as_deref(), Some(Path::new("client.pem")));
        assert_eq!(config.postgres.ssl_key.as_deref(), Some(Path::new("client.key")));

        let err = load_err(jail, &format!("[postgres]\nssl_cert = \"client.pem\"\n{MINIMAL}"));
        assert_eq!(err.key, "postgres.ssl_key");
        assert!(err.message.starts_with("is required with postgres.ssl_cert"), "{err}");
        let err = load_err(jail, &format!("[postgres]\nssl_key = \"client.key\"\n{MINIMAL}"));
        assert_eq!(err.key, "postgres.ssl_cert");
        assert!(err.message.starts_with("is required with postgres.ssl_key"), "{err}");
        let err = load_err(
            jail,
            &format!("[postgres]\nssl_cert = \"client.pem\"\nssl_key = \"nowhere.key\"\n{MINIMAL}"),
        );
        assert_eq!(err.key, "postgres.ssl_key");
        assert!(err.message.starts_with("nowhere.key is not a readable file"), "{err}");
        jail.set_env("SLUICE_POSTGRES__SSL_CERT", "missing.pem");
        let err = load_err(jail, &format!("[postgres]\nssl_key = \"client.key\"\n{MINIMAL}"));
        assert_eq!(err.key, "postgres.ssl_cert");
        assert_eq!(
            err.message,
            "missing.pem is not a readable file (from environment variable SLUICE_POSTGRES__SSL_CERT)"
        );
        Ok(())
    });
}
