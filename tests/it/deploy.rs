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

// ---------------------------------------------------------------------------
// The compose stack and the Kubernetes manifests: validated by the tools of
// their ecosystems, then checked against the binary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;
use sluice::app::http::{HEALTHZ, METRICS, READYZ, ROUTES};
use sluice::config::Config;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The validators' directory (`SLUICE_TEST_DEPLOY_TOOLS`, installed by
/// `scripts/services.sh`): `python/` (hadolint, kubectl, kubernetes-validate,
/// check-jsonschema, compose-spec, yamllint) and `npm/` (the CRD schemas).
/// `None` when it is `off` (a message says what is skipped); `off` under
/// CI, an unset variable or a missing tool fails the test.
fn deploy_tools(what: &str) -> Option<PathBuf> {
    let var = std::env::var("SLUICE_TEST_DEPLOY_TOOLS").unwrap_or_default();
    if var == "off" {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "SLUICE_TEST_DEPLOY_TOOLS=off in CI: the deployment validators must run there"
        );
        eprintln!("SKIPPED: {what} (SLUICE_TEST_DEPLOY_TOOLS=off)");
        return None;
    }
    assert!(
        !var.is_empty(),
        "SLUICE_TEST_DEPLOY_TOOLS is not set: run the tests with scripts/test.sh (or eval \"$(scripts/services.sh)\"), \
         or set SLUICE_TEST_DEPLOY_TOOLS=off to skip {what}"
    );
    let dir = PathBuf::from(var);
    for tool in [
        "python/bin/hadolint",
        "python/bin/kubectl",
        "npm/node_modules/@kubernetes-models/keda",
    ] {
        assert!(
            dir.join(tool).exists(),
            "{} is missing: run scripts/services.sh",
            dir.join(tool).display()
        );
    }
    Some(dir)
}

/// Runs `program` with `args`; (success, stdout, stderr).
fn run(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `python3 -m module args...` with the validators' packages.
fn python(tools: &Path, module: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", tools.join("python"))
        .arg("-m")
        .arg(module)
        .args(args);
    run(cmd)
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(s.clone())),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => a.iter().map(yaml_to_json).collect(),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unexpected YAML key {other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    yaml_rust2::YamlLoader::load_from_str(text)
        .expect("YAML")
        .iter()
        .map(yaml_to_json)
        .filter(|v| !v.is_null())
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// An image reference is pinned: a tag after the name, not `latest`.
fn assert_pinned(image: &str) {
    let name = image.rsplit('/').next().unwrap();
    let tag = name.split_once(':').map(|(_, t)| t).unwrap_or("");
    assert!(
        !tag.is_empty() && tag != "latest",
        "image {image} is not pinned to a tag"
    );
}

/// The config file as sluice reads it (in this process: only the file; the
/// test's environment sets no config variable).
fn load_config(path: &Path) -> Config {
    Config::load(Some(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `host:port` of `telemetry.http_addr`, its port.
fn http_port(config: &Config) -> u16 {
    let addr: std::net::SocketAddr = config
        .telemetry
        .http_addr
        .parse()
        .expect("telemetry.http_addr is an address");
    assert!(
        addr.ip().is_unspecified(),
        "http_addr {addr} must listen beyond localhost in a container"
    );
    addr.port()
}

/// The Dockerfile's `ENV` pairs (continuation lines joined).
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(DOCKERFILE).unwrap().replace("\\\n", " ");
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `FROM ... AS name` stage names of the Dockerfile, in order.
fn dockerfile_stages() -> Vec<String> {
    std::fs::read_to_string(DOCKERFILE)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_owned())
        .collect()
}

/// The kafka.properties set by `SLUICE_KAFKA__PROPERTIES__*` variables
/// (single `_` → `.`, `_FILE` read from the file), as sluice maps them.
fn env_kafka_properties(env: &[(String, String)]) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("SLUICE_KAFKA__PROPERTIES__")?;
            Some(match name.strip_suffix("_FILE") {
                Some(base) => (
                    base.to_ascii_lowercase().replace('_', "."),
                    std::fs::read_to_string(v).unwrap().trim_end().to_owned(),
                ),
                None => (name.to_ascii_lowercase().replace('_', "."), v.clone()),
            })
        })
        .collect()
}

/// Every librdkafka property the deployment gives the consumer (the
/// config's and the environment's) is one librdkafka knows, with a value
/// it accepts (`rd_kafka_conf_set`, through the rdkafka crate).
fn assert_librdkafka_accepts(what: &str, config: &Config, env: &[(String, String)]) {
    let mut props = config.consumer_properties();
    props.extend(env_kafka_properties(env));
    let mut client = rdkafka::ClientConfig::new();
    for (k, v) in &props {
        client.set(k, v);
    }
    if let Err(err) = client.create_native_config() {
        panic!("{what}: librdkafka refuses a property: {err}");
    }
}

/// Runs `sluice check` with exactly `env` (paths already local): the
/// configuration must load (exit 1, not 2: nothing answers at the
/// addresses) and `check` must report the brokers and the (redacted)
/// Postgres URL the deployment means.
fn assert_check_sees(what: &str, env: &[(String, String)], brokers: &str, redacted_url: &str) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("check").env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    // Fail fast on the unreachable services; neither is a key under test.
    cmd.env("SLUICE_STARTUP_TIMEOUT", "1s")
        .env("SLUICE_POSTGRES__CONNECT_TIMEOUT", "1s");
    for (k, _) in env {
        assert!(
            k != "SLUICE_STARTUP_TIMEOUT" && k != "SLUICE_POSTGRES__CONNECT_TIMEOUT",
            "{what} sets {k}: the test would hide it"
        );
    }
    let out = cmd.output().expect("sluice check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: sluice check\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains(&format!("error: kafka {brokers}: ")),
        "{what}: check does not report kafka {brokers}:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("postgres {redacted_url}")),
        "{what}: check does not report postgres {redacted_url}:\n{stdout}"
    );
}

/// The URL as sluice shows it (password as `***`), by sluice's own redaction.
fn redact(url: &str) -> String {
    sluice::config::PostgresConfig {
        url: url.to_owned(),
        ..Default::default()
    }
    .redacted_url()
}

/// The binary, started with `env` (its HTTP address moved to a free port),
/// answers `liveness` 200 and `readiness` 503 `{"ready":false,...}` while
/// it waits for services that are not there; both paths are routes of the
/// running server too.
async fn assert_probes_answer(what: &str, env: &[(String, String)], liveness: &str, readiness: &str) {
    for path in [liveness, readiness] {
        assert!(
            ROUTES.contains(&path),
            "{what}: {path} is not one of sluice's routes {ROUTES:?}"
        );
    }
    assert_eq!(liveness, HEALTHZ, "{what}: liveness must be {HEALTHZ}");
    assert_eq!(readiness, READYZ, "{what}: readiness must be {READYZ}");
    let addr = format!("127.0.0.1:{}", crate::harness::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("run")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("SLUICE_TELEMETRY__HTTP_ADDR", &addr)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn sluice");
    // Both paths answered (whatever the status), or 20 s.
    let answers = std::sync::Mutex::new((None, None));
    crate::harness::eventually(Duration::from_secs(20), || async {
        let live = crate::harness::http_get(&addr, liveness).await;
        let ready = crate::harness::http_get(&addr, readiness).await;
        let both = live.is_some() && ready.is_some();
        *answers.lock().unwrap() = (live, ready);
        both
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (live, ready) = answers.into_inner().unwrap();
    assert_eq!(live.map(|(c, _)| c), Some(200), "{what}: GET {liveness}");
    let (code, body) = ready.unwrap_or_else(|| panic!("{what}: GET {readiness} did not answer"));
    assert_eq!(code, 503, "{what}: GET {readiness} while starting: {body}");
    let body: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{what}: {readiness}: {e}: {body}"));
    assert_eq!(body["ready"], Value::Bool(false), "{what}: {body}");
}

const COMPOSE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose");

fn compose() -> Value {
    let text = std::fs::read_to_string(format!("{COMPOSE_DIR}/docker-compose.yml")).unwrap();
    yaml_docs(&text).remove(0)
}

/// The compose file against the Compose specification's JSON schema
/// (check-jsonschema's vendored copy) and the compose-spec parser, which
/// also resolves its references (secrets, configs, volumes, depends_on
/// conditions); every YAML file of deploy/ through yamllint --strict.
#[test]
fn the_compose_file_and_the_yaml_validate() {
    let Some(tools) = deploy_tools("check-jsonschema, compose-spec and yamllint") else {
        return;
    };
    let file = format!("{COMPOSE_DIR}/docker-compose.yml");
    let (ok, out, err) = python(
        &tools,
        "check_jsonschema",
        &["--builtin-schema", "vendor.compose-spec", &file],
    );
    assert!(ok, "check-jsonschema (compose-spec): {out}{err}");
    let script = "import sys, compose_spec\n\
                  c = compose_spec.PyCompose.from_yaml(open(sys.argv[1]).read())\n\
                  c.validate()\n\
                  print(' '.join(sorted(c.service_names())))\n";
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", tools.join("python")).args(["-c", script, &file]);
    let (ok, out, err) = run(cmd);
    assert!(ok, "compose-spec: {err}");
    let mut names: Vec<String> = compose()["services"].as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(out.trim(), names.join(" "), "compose-spec read the services");

    let deploy = format!("{ROOT}/deploy");
    let (ok, out, err) = python(
        &tools,
        "yamllint",
        &["--strict", "-c", &format!("{deploy}/.yamllint.yml"), &deploy],
    );
    assert!(ok, "yamllint: {out}{err}");
}

/// hadolint finds nothing in the Dockerfile (its ignores are inline, with
/// their reason).
#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(tools) = deploy_tools("hadolint") else {
        return;
    };
    let mut cmd = Command::new(tools.join("python/bin/hadolint"));
    cmd.arg("--no-color").arg(DOCKERFILE);
    let (ok, out, err) = run(cmd);
    assert!(ok && out.is_empty(), "hadolint: {out}{err}");
}

/// The compose stack fits the binary and itself: pinned images, sluice's
/// image the Dockerfile's default stage, the producer a stage of it, a
/// grace period above the config's `shutdown_timeout`, a health check on
/// a route sluice serves at the configured port, Prometheus scraping that
/// port and loading the alert rules, sluice's OTLP endpoint the collector's
/// receiver, Grafana given the dashboard; and the binary, given the stack's
/// environment, config and secret, loads it and sees the stack's Kafka and
/// Postgres.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_stack_fits_the_binary() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for (name, svc) in services {
        assert_pinned(
            svc["image"]
                .as_str()
                .unwrap_or_else(|| panic!("service {name} names its image")),
        );
        if let Some(deps) = svc.get("depends_on") {
            for (dep, cond) in deps.as_object().expect("depends_on with conditions") {
                assert!(services.contains_key(dep), "{name} depends on {dep}");
                let cond = s(&cond["condition"]);
                if cond == "service_healthy" {
                    assert!(
                        services[dep].get("healthcheck").is_some(),
                        "{name} waits for {dep}'s health check, which it lacks"
                    );
                }
            }
        }
    }
    let stages = dockerfile_stages();
    let sluice = &services["sluice"];
    assert_eq!(s(&sluice["image"]), format!("sluice:{VERSION}"));
    assert_eq!(s(&sluice["build"]["dockerfile"]), "deploy/Dockerfile");
    assert!(
        Path::new(COMPOSE_DIR)
            .join(s(&sluice["build"]["context"]))
            .join("deploy/Dockerfile")
            .exists(),
        "the build context holds deploy/Dockerfile"
    );
    assert!(
        sluice["build"].get("target").is_none(),
        "sluice is the Dockerfile's default (last) stage"
    );
    let producer = &services["producer"];
    assert_eq!(s(&producer["image"]), format!("sluice-producer:{VERSION}"));
    assert_eq!(s(&producer["build"]["dockerfile"]), "deploy/Dockerfile");
    let target = s(&producer["build"]["target"]);
    assert!(stages.iter().any(|st| st == target), "stage {target} in {stages:?}");
    assert_ne!(
        stages.last().map(String::as_str),
        Some(target),
        "the producer is not the default stage"
    );

    // The config file the stack mounts where the image's SLUICE_CONFIG points.
    let image_env = dockerfile_env();
    let image_config = image_env
        .iter()
        .find(|(k, _)| k == "SLUICE_CONFIG")
        .map(|(_, v)| v.clone())
        .unwrap();
    let configs = c["configs"].as_object().unwrap();
    let mount = sluice["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| s(&m["target"]) == image_config)
        .unwrap_or_else(|| panic!("the compose file mounts a config at {image_config}"));
    let config_path = Path::new(COMPOSE_DIR).join(s(&configs[s(&mount["source"])]["file"]));
    let config = load_config(&config_path);

    let grace = humantime::parse_duration(s(&sluice["stop_grace_period"])).unwrap();
    assert!(
        grace >= config.shutdown_timeout + Duration::from_secs(10),
        "stop_grace_period {grace:?} must exceed shutdown_timeout {:?} with a margin",
        config.shutdown_timeout
    );
    assert_eq!(s(&sluice["stop_signal"]), "SIGTERM");
    let port = http_port(&config);
    let test: Vec<&str> = sluice["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    let url = test
        .iter()
        .find(|a| a.starts_with("http://"))
        .expect("a URL in the health check");
    let (authority, path) = url["http://".len()..].split_once('/').unwrap();
    assert_eq!(authority, format!("127.0.0.1:{port}"), "{url}");
    let path = format!("/{path}");
    assert_eq!(path, READYZ, "compose's health check is readiness");
    let published = s(&sluice["ports"][0]);
    assert!(published.ends_with(&format!(":{port}")), "{published}");

    // Prometheus scrapes that port and path, and loads the alert rules.
    let prom_mounts = services["prometheus"]["configs"].as_array().unwrap();
    let file_of = |target_suffix: &str| -> PathBuf {
        let m = prom_mounts
            .iter()
            .find(|m| s(&m["target"]).ends_with(target_suffix))
            .unwrap();
        Path::new(COMPOSE_DIR).join(s(&configs[s(&m["source"])]["file"]))
    };
    let prom = yaml_docs(&std::fs::read_to_string(file_of("prometheus.yml")).unwrap()).remove(0);
    let job = &prom["scrape_configs"][0];
    assert_eq!(s(&job["metrics_path"]), METRICS);
    assert_eq!(s(&job["static_configs"][0]["targets"][0]), format!("sluice:{port}"));
    let rules = s(&prom["rule_files"][0]);
    let alerts = prom_mounts
        .iter()
        .find(|m| s(&m["target"]) == rules)
        .expect("the rule file is mounted");
    assert_eq!(
        std::fs::canonicalize(Path::new(COMPOSE_DIR).join(s(&configs[s(&alerts["source"])]["file"]))).unwrap(),
        std::fs::canonicalize(format!("{ROOT}/deploy/prometheus/alerts.yml")).unwrap()
    );

    // sluice's OTLP endpoint is the collector's gRPC receiver.
    let endpoint = config
        .telemetry
        .otlp_endpoint
        .as_deref()
        .expect("telemetry.otlp_endpoint");
    let collector = &services["otel-collector"];
    let collector_config = collector["configs"][0].clone();
    let otel = yaml_docs(
        &std::fs::read_to_string(Path::new(COMPOSE_DIR).join(s(&configs[s(&collector_config["source"])]["file"])))
            .unwrap(),
    )
    .remove(0);
    assert!(
        collector["command"][0]
            .as_str()
            .unwrap()
            .ends_with(s(&collector_config["target"])),
        "the collector runs with the mounted config"
    );
    let grpc = s(&otel["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]);
    assert_eq!(
        endpoint,
        format!("http://otel-collector:{}", grpc.rsplit(':').next().unwrap())
    );
    for pipeline in ["traces", "metrics"] {
        assert_eq!(
            otel["service"]["pipelines"][pipeline]["receivers"][0], "otlp",
            "{pipeline}"
        );
    }

    // Grafana gets the dashboard and a Prometheus data source.
    let grafana = services["grafana"]["configs"].as_array().unwrap();
    assert!(grafana.iter().any(|m| {
        std::fs::canonicalize(Path::new(COMPOSE_DIR).join(s(&configs[s(&m["source"])]["file"]))).ok()
            == std::fs::canonicalize(format!("{ROOT}/deploy/grafana/sluice.json")).ok()
    }));

    // The binary with the stack's environment: the image's ENV, the
    // service's, the secret files where compose mounts them.
    let secrets = c["secrets"].as_object().unwrap();
    let mut env: Vec<(String, String)> = image_env.clone();
    for (k, v) in sluice["environment"].as_object().unwrap() {
        let mut v = s(v).to_owned();
        for name in sluice["secrets"].as_array().unwrap().iter().map(s) {
            let local = Path::new(COMPOSE_DIR).join(s(&secrets[name]["file"]));
            v = v.replace(&format!("/run/secrets/{name}"), local.to_str().unwrap());
        }
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v));
    }
    env.retain(|(k, _)| k != "SLUICE_CONFIG");
    env.push(("SLUICE_CONFIG".into(), config_path.to_str().unwrap().into()));
    let url_file = env
        .iter()
        .find(|(k, _)| k == "SLUICE_POSTGRES__URL_FILE")
        .map(|(_, v)| v.clone())
        .unwrap();
    let url = std::fs::read_to_string(url_file).unwrap();
    assert_librdkafka_accepts("compose", &config, &env);
    assert_check_sees("compose", &env, &config.kafka.brokers, &redact(url.trim_end()));
    assert_probes_answer("compose (image's HEALTHCHECK, compose's)", &env, HEALTHZ, &path).await;
}

/// The Kubernetes manifests: `kubectl kustomize` renders the base and each
/// overlay; kubernetes-validate --strict accepts every built-in kind; the
/// KEDA and Prometheus Operator resources, for which it has no schema,
/// validate against their CRD schemas (@kubernetes-models), and nothing
/// else goes unvalidated.
#[test]
fn the_kubernetes_manifests_validate() {
    let Some(tools) = deploy_tools("kubectl kustomize, kubernetes-validate and the CRD schemas") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, docs) in render_all(&tools) {
        let file = dir.path().join(format!("{}.yaml", name.replace('/', "-")));
        std::fs::write(&file, render(&tools, &name)).unwrap();
        let (ok, out, err) = python(&tools, "kubernetes_validate", &["--strict", file.to_str().unwrap()]);
        assert!(ok, "kubernetes-validate {name}: {out}{err}");
        let passed = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.starts_with("INFO") && l.contains(" passed "))
            .count();
        let (builtin, custom): (Vec<&Value>, Vec<&Value>) = docs.iter().partition(|d| is_builtin(d));
        assert_eq!(
            passed,
            builtin.len(),
            "{name}: every built-in resource validated: {out}{err}"
        );
        let unvalidated: Vec<&str> = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        assert_eq!(unvalidated.len(), custom.len(), "{name}: {unvalidated:?}");
        if custom.is_empty() {
            continue;
        }
        let mut node = Command::new("node");
        node.arg(format!("{ROOT}/tests/support/crds/validate.mjs"))
            .env("NODE_PATH", tools.join("npm/node_modules"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = node.spawn().expect("node");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(serde_json::to_string(&custom).unwrap().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: CRD schemas: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: Vec<String> = custom
            .iter()
            .map(|d| format!("ok {} {}", s(&d["kind"]), s(&d["metadata"]["name"])))
            .collect();
        assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{name}");
    }
}

/// Kinds of the Kubernetes API itself (no dot in the group: `v1`,
/// `apps/v1`, `policy/v1`); the others are custom resources.
fn is_builtin(doc: &Value) -> bool {
    let api = s(&doc["apiVersion"]);
    match api.split_once('/') {
        None => true,
        Some((group, _)) => !group.contains('.'),
    }
}

const KUSTOMIZATIONS: [&str; 3] = ["base", "overlays/dev", "overlays/production"];

/// `kubectl kustomize deploy/kubernetes/<name>`.
fn render(tools: &Path, name: &str) -> String {
    let mut cmd = Command::new(tools.join("python/bin/kubectl"));
    cmd.arg("kustomize").arg(format!("{ROOT}/deploy/kubernetes/{name}"));
    let (ok, out, err) = run(cmd);
    assert!(ok, "kubectl kustomize {name}: {err}");
    out
}

fn render_all(tools: &Path) -> Vec<(String, Vec<Value>)> {
    KUSTOMIZATIONS
        .iter()
        .map(|name| (name.to_string(), yaml_docs(&render(tools, name))))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// What the kubelet would give the container: its env (the downward API's
/// pod name resolved) and its volumes as files under `root` (ConfigMaps
/// and Secrets from the rendered documents; a Secret the overlay does not
/// render gets `placeholder` in each key it mounts). Paths in the env and
/// in the mounted files are rewritten to `root`.
fn emulate_pod(docs: &[Value], root: &Path, pod_name: &str, placeholder: &str) -> Vec<(String, String)> {
    let sts = find(docs, "StatefulSet")[0];
    let spec = &sts["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    let volumes = spec["volumes"].as_array().unwrap();
    let mounts: Vec<(String, &Value, Option<&str>)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let v = volumes.iter().find(|v| v["name"] == m["name"]).expect("volume");
            (s(&m["mountPath"]).to_owned(), v, m["subPath"].as_str())
        })
        .collect();
    let local = |p: &str| root.join(p.trim_start_matches('/'));
    let rewrite = |text: &str| -> String {
        let mut t = text.to_owned();
        for (path, _, _) in &mounts {
            t = t.replace(path.as_str(), local(path).to_str().unwrap());
        }
        t
    };
    for (path, volume, sub_path) in &mounts {
        let files: BTreeMap<String, String> = if let Some(cm) = volume.get("configMap") {
            let doc = find(docs, "ConfigMap")
                .into_iter()
                .find(|d| d["metadata"]["name"] == cm["name"])
                .expect("the mounted ConfigMap is rendered");
            doc["data"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), s(v).to_owned()))
                .collect()
        } else if let Some(secret) = volume.get("secret") {
            let rendered = find(docs, "Secret")
                .into_iter()
                .find(|d| d["metadata"]["name"] == secret["secretName"]);
            let keys: Vec<&str> = secret["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| s(&i["key"]))
                .collect();
            keys.iter()
                .map(|k| {
                    let value = match rendered {
                        Some(doc) => {
                            use base64::Engine as _;
                            let b64 = doc["data"][*k]
                                .as_str()
                                .unwrap_or_else(|| panic!("Secret has no key {k}"));
                            String::from_utf8(
                                base64::engine::general_purpose::STANDARD
                                    .decode(b64.split_whitespace().collect::<String>())
                                    .unwrap(),
                            )
                            .unwrap()
                        }
                        None => placeholder.to_owned(),
                    };
                    (k.to_string(), value)
                })
                .collect()
        } else {
            panic!("unexpected volume {volume}");
        };
        match sub_path {
            Some(sub) => {
                let file = local(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, rewrite(&files[*sub])).unwrap();
            }
            None => {
                let items: BTreeMap<&str, &str> = volume["secret"]["items"]
                    .as_array()
                    .map(|a| a.iter().map(|i| (s(&i["key"]), s(&i["path"]))).collect())
                    .unwrap_or_default();
                std::fs::create_dir_all(local(path)).unwrap();
                for (k, content) in &files {
                    let name = items.get(k.as_str()).copied().unwrap_or(k);
                    std::fs::write(local(path).join(name), rewrite(content)).unwrap();
                }
            }
        }
    }
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match (e.get("value"), e.get("valueFrom")) {
                (Some(v), None) => rewrite(s(v)),
                (None, Some(from)) => {
                    assert_eq!(s(&from["fieldRef"]["fieldPath"]), "metadata.name", "{e}");
                    pod_name.to_owned()
                }
                _ => panic!("unexpected env {e}"),
            };
            (s(&e["name"]).to_owned(), value)
        })
        .collect()
}

/// Each rendered Kubernetes deployment fits the binary: the pod runs
/// sluice's image at this version (the one the Dockerfile builds), non-root
/// with a read-only root; the grace period exceeds the config's
/// `shutdown_timeout`; the probes ask routes sluice serves, on the port it
/// listens on; group.instance.id comes from the pod name; the Service,
/// PodDisruptionBudget and ServiceMonitor select the pods; the KEDA trigger
/// watches the config's group, topic and brokers and targets the
/// StatefulSet. And the binary, given the pod's environment and files,
/// loads them (every variable and key known), sees the intended Kafka and
/// Postgres, and answers the probes.
#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_manifests_fit_the_binary() {
    let Some(tools) = deploy_tools("the Kubernetes checks (they render with kubectl kustomize)") else {
        return;
    };
    let compose_image = s(&compose()["services"]["sluice"]["image"]).to_owned();
    for (name, docs) in render_all(&tools) {
        let what = format!("kubernetes {name}");
        let sts = find(&docs, "StatefulSet");
        assert_eq!(sts.len(), 1, "{what}: one StatefulSet");
        let sts = sts[0];
        let pod = &sts["spec"]["template"];
        let spec = &pod["spec"];
        let container = &spec["containers"][0];
        let image = s(&container["image"]);
        assert_pinned(image);
        assert!(
            image == compose_image || image.ends_with(&format!("/{compose_image}")),
            "{what}: image {image} is not sluice:{VERSION} (built by deploy/Dockerfile)"
        );
        let labels = pod["metadata"]["labels"].as_object().unwrap();
        let selects = |selector: &Value| {
            selector
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        assert!(selects(&sts["spec"]["selector"]["matchLabels"]), "{what}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_ne!(spec["securityContext"]["runAsUser"], 0, "{what}");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{what}");
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"], false,
            "{what}"
        );

        let root = tempfile::tempdir().unwrap();
        let placeholder = "postgres://sluice:placeholder@db.invalid:5432/sluice";
        let env = emulate_pod(&docs, root.path(), "sluice-0", placeholder);
        let config_path = env.iter().find(|(k, _)| k == "SLUICE_CONFIG").map(|(_, v)| v.clone());
        let config_path = PathBuf::from(config_path.expect("SLUICE_CONFIG"));
        let config = load_config(&config_path);
        let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_u64().unwrap());
        assert!(
            grace >= config.shutdown_timeout + Duration::from_secs(10),
            "{what}: terminationGracePeriodSeconds {grace:?} must exceed shutdown_timeout {:?} with a margin",
            config.shutdown_timeout
        );
        let port = http_port(&config);
        let named = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["containerPort"] == port)
            .unwrap_or_else(|| panic!("{what}: the container declares port {port}"));
        let port_name = s(&named["name"]);
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(s(&container[probe]["httpGet"]["port"]), port_name, "{what}: {probe}");
        }
        assert_eq!(
            env.iter()
                .find(|(k, _)| k == "SLUICE_KAFKA__INSTANCE_ID")
                .map(|(_, v)| v.as_str()),
            Some("sluice-0"),
            "{what}: group.instance.id from the pod name"
        );

        // The Service, PDB, ServiceMonitor and ScaledObject point at these pods.
        let service = find(&docs, "Service")[0];
        assert_eq!(sts["spec"]["serviceName"], service["metadata"]["name"], "{what}");
        assert!(
            selects(&service["spec"]["selector"]),
            "{what}: the Service selects the pods"
        );
        assert!(
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["targetPort"] == port_name),
            "{what}"
        );
        let pdb = find(&docs, "PodDisruptionBudget")[0];
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"]),
            "{what}: the PDB selects the pods"
        );
        for monitor in find(&docs, "ServiceMonitor") {
            let service_labels = service["metadata"]["labels"].as_object().unwrap();
            let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().unwrap();
            assert!(wanted.iter().all(|(k, v)| service_labels.get(k) == Some(v)), "{what}");
            let endpoint = &monitor["spec"]["endpoints"][0];
            assert!(
                service["spec"]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == endpoint["port"]),
                "{what}: ServiceMonitor port"
            );
            assert_eq!(s(&endpoint["path"]), METRICS, "{what}");
        }
        assert_eq!(pod["metadata"]["annotations"]["prometheus.io/path"], METRICS, "{what}");
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/port"],
            port.to_string(),
            "{what}"
        );
        let brokers = env
            .iter()
            .find(|(k, _)| k == "SLUICE_KAFKA__BROKERS")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| config.kafka.brokers.clone());
        for scaled in find(&docs, "ScaledObject") {
            let target = &scaled["spec"]["scaleTargetRef"];
            assert_eq!(target["kind"], "StatefulSet", "{what}");
            assert_eq!(target["name"], sts["metadata"]["name"], "{what}");
            assert!(
                sts["spec"].get("replicas").is_none(),
                "{what}: KEDA's HPA owns replicas"
            );
            let min = scaled["spec"]["minReplicaCount"].as_u64().unwrap();
            let max = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
            assert!(1 <= min && min <= max, "{what}: {min}..{max}");
            for trigger in scaled["spec"]["triggers"].as_array().unwrap() {
                assert_eq!(trigger["type"], "kafka", "{what}");
                let m = &trigger["metadata"];
                assert_eq!(s(&m["consumerGroup"]), config.kafka.group_id, "{what}");
                assert_eq!(s(&m["bootstrapServers"]), brokers, "{what}");
                let topic = s(&m["topic"]);
                assert!(
                    config.pipelines.iter().any(|p| p.topics.iter().any(|t| t == topic)),
                    "{what}: {topic}"
                );
                assert_eq!(s(&m["allowIdleConsumers"]), "false", "{what}");
                if let Some(auth) = trigger.get("authenticationRef") {
                    let auth = find(&docs, "TriggerAuthentication")
                        .into_iter()
                        .find(|d| d["metadata"]["name"] == auth["name"])
                        .unwrap_or_else(|| panic!("{what}: TriggerAuthentication {auth}"));
                    let volume = spec["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|v| v.get("secret").is_some())
                        .unwrap();
                    for r in auth["spec"]["secretTargetRef"].as_array().unwrap() {
                        assert_eq!(
                            r["name"], volume["secret"]["secretName"],
                            "{what}: KEDA reads sluice's Secret"
                        );
                        assert!(
                            volume["secret"]["items"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|i| i["key"] == r["key"]),
                            "{what}: {r}"
                        );
                    }
                }
            }
        }

        // The binary with the pod's environment and files.
        let url = match find(&docs, "Secret").first() {
            Some(_) => {
                let file = env
                    .iter()
                    .find(|(k, _)| k == "SLUICE_POSTGRES__URL_FILE")
                    .map(|(_, v)| v.clone());
                std::fs::read_to_string(file.expect("SLUICE_POSTGRES__URL_FILE")).unwrap()
            }
            None => placeholder.to_owned(),
        };
        assert_librdkafka_accepts(&what, &config, &env);
        assert_check_sees(&what, &env, &brokers, &redact(&url));
        let path = |probe: &str| s(&container[probe]["httpGet"]["path"]).to_owned();
        assert_probes_answer(&what, &env, &path("livenessProbe"), &path("readinessProbe")).await;
    }
}
