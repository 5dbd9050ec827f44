//! The deployment artefacts against the binary: what they reference must
//! exist in sluice's config schema and CLI, read from the code, not from a
//! copied list.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice::config::default_shutdown_timeout;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/sluice.service");

/// The unit's `KEY=value` lines of `[Service]`, in order.
fn service_lines(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `systemd-analyze verify` accepts the unit (run where systemd-analyze is
/// installed; with the built binary in place of the installed path), the
/// stop timeout leaves the default `shutdown_timeout` its time, and a
/// configuration error (exit 2) is not restarted.
#[test]
fn the_systemd_unit_verifies_and_fits_the_binary() {
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    let lines = service_lines(&unit);
    let get = |key: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let stop = humantime::parse_duration(get("TimeoutStopSec")[0]).expect("TimeoutStopSec");
    let shutdown = default_shutdown_timeout();
    assert!(
        stop >= shutdown + Duration::from_secs(10),
        "TimeoutStopSec {stop:?} must exceed the default shutdown_timeout {shutdown:?} with a margin"
    );
    assert_eq!(get("RestartPreventExitStatus"), ["2"], "a config error is not retried");
    assert_eq!(get("KillSignal"), ["SIGTERM"]);
    // The subcommand and flag it runs exist.
    let exec = get("ExecStart")[0];
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[..3], ["/usr/local/bin/sluice", "run", "--config"], "{exec}");
    // Every SLUICE_* variable it sets names a config key (a _FILE one, the
    // key read from the file) or the log filter.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "postgres://sluice:pw@db/sluice\n").unwrap();
    for value in get("Environment") {
        let (name, _) = value.split_once('=').expect("NAME=value");
        if name == "SLUICE_LOG" {
            continue;
        }
        let config = dir.path().join("sluice.toml");
        std::fs::write(
            &config,
            "[[pipelines]]\nname = \"p\"\ntopics = [\"t\"]\ntable = \"t\"\ncolumns = { id = \"/id\" }\n",
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(&config)
            .env_clear()
            .env(name, &secret)
            .env("SLUICE_STARTUP_TIMEOUT", "1s")
            .env("SLUICE_POSTGRES__CONNECT_TIMEOUT", "1s")
            .output()
            .expect("run sluice check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A config error exits 2 naming the key; anything else (here: no
        // services on the default addresses) is past config loading.
        assert_ne!(out.status.code(), Some(2), "{name}: {stderr}");
    }
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(_) => {
            let copy = dir.path().join("sluice.service");
            std::fs::write(
                &copy,
                unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice")),
            )
            .unwrap();
            let out = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&copy)
                .output()
                .expect("systemd-analyze");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "systemd-analyze verify: {stderr}");
            let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("sluice.service")).collect();
            assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:?}");
        }
        Err(_) => eprintln!("systemd-analyze not installed: the unit's syntax is not verified here"),
    }
    assert!(Path::new(UNIT).exists());
}

const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile");

/// The Dockerfile copies what exists, sets config keys sluice knows,
/// exposes the port its health check asks, and that check's path answers
/// 200 from the binary while it still waits for its services.
#[tokio::test(flavor = "multi_thread")]
async fn the_dockerfile_fits_the_binary() {
    let text = std::fs::read_to_string(DOCKERFILE).expect("Dockerfile");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Join continuation lines, drop comments.
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    for l in lines.iter().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "{l}: {src} does not exist");
        }
    }
    let env: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let http_addr = env
        .iter()
        .find(|(k, _)| k == "SLUICE_TELEMETRY__HTTP_ADDR")
        .map(|(_, v)| v.clone())
        .expect("the image serves HTTP beyond localhost");
    let port = http_addr.rsplit(':').next().unwrap();
    assert!(lines.iter().any(|l| *l == format!("EXPOSE {port}")), "EXPOSE {port}");
    let health = lines
        .iter()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("HEALTHCHECK");
    let url = health
        .split('"')
        .find(|s| s.starts_with("http://"))
        .expect("a URL in HEALTHCHECK");
    let (authority, path) = url["http://".len()..].split_once('/').unwrap();
    assert_eq!(authority.rsplit(':').next().unwrap(), port, "{url}");
    assert!(lines.contains(&"STOPSIGNAL SIGTERM"));
    assert!(!lines.iter().any(|l| *l == "USER root" || *l == "USER 0"), "not root");

    // The binary, configured by the image's variables (its HTTP address
    // moved to a free port), answers the health check's path at once,
    // while it waits for a Postgres that is not there.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "[postgres]\nurl = \"postgres://sluice@127.0.0.1:1/sluice\"\n[[pipelines]]\nname = \"p\"\ntopics = [\"t\"]\ntable = \"t\"\ncolumns = { id = \"/id\" }\n",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("run").env_clear();
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .env("SLUICE_CONFIG", &config)
        .env("SLUICE_TELEMETRY__HTTP_ADDR", &addr)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sluice");
    let answered = crate::harness::eventually(Duration::from_secs(20), || async {
        crate::harness::http_get(&addr, &format!("/{path}"))
            .await
            .map(|(status, _)| status)
            == Some(200)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "GET /{path} on {addr}");
}

/// The librdkafka features README "Kafka security" says are compiled in are
/// the ones the binary's librdkafka reports (`builtin.features`).
#[test]
fn the_readme_names_the_librdkafka_features_compiled_in() {
    let native = rdkafka::ClientConfig::new().create_native_config().expect("config");
    let features = native.get("builtin.features").expect("builtin.features");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("librdkafka `builtin.features`:"))
        .unwrap_or_else(|| panic!("README states the built-in features: librdkafka `builtin.features`: `{features}`"));
    let stated = line.split('`').nth(3).expect("the list in backticks");
    assert_eq!(stated, features, "README says {stated:?}, the binary has {features:?}");
}
