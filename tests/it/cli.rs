//! The CLI's answers to bad configs and mappings.

use std::process::Command;

use crate::harness::*;

fn sluice(args: &[&str], config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("run sluice")
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_missing_column_and_fails() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("check"), unique("g"), unique("orders"));
    // No `customer` column.
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint, amount numeric, kafka_offset bigint)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let columns = "id = \"/id\"\ncustomer = \"/customer/name\"\namount = \"/amount\"\nkafka_offset = \"@offset\"";
    let (_dir, path) = write_config(&config(&services, &group, &topic, &table, columns, ""));
    let migrate = sluice(&["migrate"], &path);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    let out = sluice(&["check"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check must fail:\n{stdout}");
    assert!(
        stdout.contains(&format!(
            "pipeline `p`: column `customer` does not exist in table public.{table}"
        )),
        "names the pipeline, column and table:\n{stdout}"
    );

    sqlx::query(&format!("ALTER TABLE {table} ADD COLUMN customer text"))
        .execute(&pool)
        .await
        .unwrap();
    let out = sluice(&["check"], &path);
    assert!(
        out.status.success(),
        "passes once the column exists:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_column_whose_type_cannot_take_the_value() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("check"), unique("g"), unique("orders"));
    sqlx::query(&format!(
        "CREATE TABLE {table} (id bigint, spot point, kafka_offset boolean)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let columns = "id = \"/id\"\nspot = \"/spot\"\nkafka_offset = \"@offset\"";
    let (_dir, path) = write_config(&config(&services, &group, &topic, &table, columns, ""));
    let out = sluice(&["check"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("column `spot` has type point"), "{stdout}");
    assert!(stdout.contains("column `kafka_offset` (bool)"), "{stdout}");
}

#[test]
fn an_unknown_key_is_named() {
    let services = Services {
        brokers: "127.0.0.1:9092".into(),
        database_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
    };
    let cfg = config(&services, "g", "t", "t", "id = \"/id\"", "batch_sise = 10");
    let (_dir, path) = write_config(&cfg);
    let out = sluice(&["check"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "config errors exit 2:\n{stderr}");
    assert!(stderr.contains("batch_sise"), "names the unknown key:\n{stderr}");
}

#[test]
fn version_and_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sluice "));
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "migrate"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// `sluice check` in upsert mode: the key needs a unique index on exactly
/// its columns (here mixed-case, composite, in another order).
#[tokio::test(flavor = "multi_thread")]
async fn check_reports_an_upsert_key_without_a_unique_index() {
    let services = Services::from_env();
    let pool = services.pool().await;
    let (topic, group, table) = (unique("check"), unique("g"), unique("kv"));
    sqlx::query(&format!("CREATE TABLE {table} (id bigint, \"Region\" text, v bigint)"))
        .execute(&pool)
        .await
        .unwrap();
    let columns = "id = \"/id\"\nRegion = \"/region\"\nv = \"/v\"";
    let extra = "mode = \"upsert\"\nkey = [\"id\", \"Region\"]";
    let (_dir, path) = write_config(&config(&services, &group, &topic, &table, columns, extra));
    let migrate = sluice(&["migrate"], &path);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    let out = sluice(&["check"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check must fail:\n{stdout}");
    assert!(
        stdout.contains("pipeline `p` (pipelines[0].key): table public.")
            && stdout.contains("has no primary key or unique index on exactly (id, Region)"),
        "{stdout}"
    );

    sqlx::query(&format!("CREATE UNIQUE INDEX ON {table} (\"Region\", id)"))
        .execute(&pool)
        .await
        .unwrap();
    let out = sluice(&["check"], &path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "passes with the index:\n{stdout}");
    assert!(
        stdout.contains("upsert on (id, Region), unique index found"),
        "{stdout}"
    );
}
