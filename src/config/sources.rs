//! The figment providers behind [`Config::figment`](super::Config::figment):
//! the environment (`SLUICE_` prefix, `__` between levels) and a wrapper
//! that normalises `kafka.properties` in the TOML file.
//!
//! librdkafka property names contain dots (`security.protocol`), which every
//! figment path treats as nesting. So that a property set in the file and the
//! same property set in the environment land on the *same* key (and the
//! environment wins the merge), both providers emit `kafka.properties` as a
//! flat table of whole property names.

use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Environment variables starting with this configure sluice.
pub const ENV_PREFIX: &str = "SLUICE_";

/// The top-level config keys. A variable without a `__` level separator is
/// a config key only when it names one of these (`SLUICE_SHUTDOWN_TIMEOUT`).
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "kafka",
    "postgres",
    "shutdown_timeout",
    "startup_timeout",
    "pipelines",
    "telemetry",
];

/// Whether `SLUICE_<name>` is meant as a config key.
///
/// Single-level `SLUICE_*` names that are not top-level keys belong to
/// tooling, not to the config: the CLI's `SLUICE_CONFIG`, `SLUICE_LOG`,
/// `SLUICE_LOG_FORMAT`, and what the scripts export and the `sluice`
/// processes they (and the integration tests) spawn inherit —
/// `SLUICE_KAFKA_BROKERS`, `SLUICE_TEST_DATABASE_URL`, `SLUICE_BIN`,
/// `SLUICE_TOOLS_DIR`, `SLUICE_QUICKSTART_COUNT`, ... A fixed list of those
/// would break the binary whenever a script adds one. Every variable with a
/// `__` is a config key, so a misspelt `SLUICE_KAFKA__BROKERZ` or
/// `SLUICE_KAFAK__BROKERS` is still an error; only a misspelt top-level
/// scalar (`SLUICE_SHUTDOWN_TIMOUT`) goes unnoticed.
pub fn is_config_var(name: &str) -> bool {
    name.contains("__") || TOP_LEVEL_KEYS.iter().any(|k| k.eq_ignore_ascii_case(name))
}

/// The metadata name of [`SluiceEnv`]; errors use it to name the variable.
pub(crate) const ENV_METADATA_NAME: &str = "environment variables";

/// The environment provider: `SLUICE_KAFKA__BROKERS` sets `kafka.brokers`.
///
/// Values are parsed like figment's own `Env` (`"8"` is an integer, `"true"`
/// a boolean), except under `kafka.properties`, whose values stay the exact
/// strings librdkafka will receive. There, single underscores become dots,
/// because shells cannot export names with dots:
/// `SLUICE_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL` sets
/// `security.protocol` (every string-valued librdkafka property is spelled
/// with dots only, so the mapping is unambiguous).
pub(crate) struct SluiceEnv;

impl Provider for SluiceEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME).interpolater(|_, keys| env_var_name(keys))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|name| is_config_var(name.as_str()))
            .split("__");
        let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.as_str().to_owned(), v)).collect();
        let mut dict = Dict::new();
        for (key, raw) in &vars {
            // `<VAR>_FILE`: the value is the content of the file it names
            // (Kubernetes Secrets, systemd credentials), taken as text.
            let (key, value) = match key.strip_suffix(SECRET_FILE_SUFFIX) {
                Some(base) => {
                    if vars.iter().any(|(k, _)| k == base) {
                        let var = env_var_name(&base.split('.').collect::<Vec<_>>());
                        return Err(Error::from(format!(
                            "{var} and {var}_FILE are both set; set one of them"
                        )));
                    }
                    (base, Value::from(read_secret_file(base, raw).map_err(Error::from)?))
                }
                None if key.starts_with("kafka.properties.") => (key.as_str(), Value::from(raw.clone())),
                None => (key.as_str(), raw.parse().unwrap_or_else(|never| match never {})),
            };
            let entry = match key.strip_prefix("kafka.properties.") {
                Some(name) => nest(&["kafka", "properties", &name.replace('_', ".")], value),
                None => nest(&key.split('.').collect::<Vec<_>>(), value),
            };
            merge_into(&mut dict, entry);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// A variable named with this suffix (`SLUICE_POSTGRES__URL_FILE`) reads the
/// value of the one without it from a file.
const SECRET_FILE_SUFFIX: &str = "_file";

/// The content of the secret file `path` given for the key `key`, without
/// one trailing newline. An error names the variable and the path, never
/// the content.
fn read_secret_file(key: &str, path: &str) -> Result<String, String> {
    let var = format!("{}_FILE", env_var_name(&key.split('.').collect::<Vec<_>>()));
    let mut text =
        std::fs::read_to_string(path).map_err(|err| format!("{var}: cannot read the file {path:?}: {err}"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{var}: the file {path:?} is empty"));
    }
    Ok(text)
}

/// The variable that sets the key path `keys`: the inverse of [`SluiceEnv`]'s
/// mapping, for error messages.
pub(crate) fn env_var_name(keys: &[&str]) -> String {
    let rest = match keys {
        ["kafka", "properties", name, ..] => {
            format!("KAFKA__PROPERTIES__{}", name.to_ascii_uppercase().replace('.', "_"))
        }
        _ => keys.join("__").to_ascii_uppercase(),
    };
    format!("{ENV_PREFIX}{rest}")
}

/// `{a: {b: value}}` for `[a, b]`.
fn nest(keys: &[&str], value: Value) -> Dict {
    let (last, parents) = keys.split_last().expect("figment's Env never yields an empty key");
    let mut dict = Dict::new();
    dict.insert((*last).to_owned(), value);
    for key in parents.iter().rev() {
        let mut outer = Dict::new();
        outer.insert((*key).to_owned(), Value::from(dict));
        dict = outer;
    }
    dict
}

/// Deep merge, `other` winning on conflicts.
fn merge_into(dict: &mut Dict, other: Dict) {
    for (key, value) in other {
        match (dict.get_mut(&key), value) {
            (Some(Value::Dict(_, mine)), Value::Dict(_, theirs)) => merge_into(mine, theirs),
            (_, value) => {
                dict.insert(key, value);
            }
        }
    }
}

/// Wraps a file provider so that `kafka.properties` is a flat table of whole
/// property names. In TOML, `security.protocol = "SSL"` under
/// `[kafka.properties]` is a nested table `{security: {protocol: "SSL"}}`
/// while `"security.protocol" = "SSL"` is one key; both mean the same
/// property, so both become the key `security.protocol`.
pub(crate) struct FlattenProperties<P>(pub P);

impl<P: Provider> Provider for FlattenProperties<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn profile(&self) -> Option<Profile> {
        self.0.profile()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            let Some(Value::Dict(_, kafka)) = dict.get_mut("kafka") else {
                continue;
            };
            let Some(Value::Dict(_, properties)) = kafka.get_mut("properties") else {
                continue;
            };
            let mut flat = Dict::new();
            if let Err(name) = flatten("", std::mem::take(properties), &mut flat) {
                let mut err = Error::from(format!(
                    "property {name:?} is given twice, once as a quoted key and once as nested keys"
                ));
                err.path = vec!["kafka".into(), "properties".into(), name];
                return Err(err);
            }
            *properties = flat;
        }
        Ok(data)
    }
}

/// Flattens nested tables into dotted names; `Err(name)` for a name given twice.
fn flatten(prefix: &str, dict: Dict, out: &mut Dict) -> Result<(), String> {
    for (key, value) in dict {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Dict(_, inner) => flatten(&name, inner, out)?,
            value => {
                if out.contains_key(&name) {
                    return Err(name);
                }
                out.insert(name, value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tooling_variables_are_not_config_keys() {
        for name in [
            "CONFIG",
            "log",
            "LOG_FORMAT",
            "KAFKA_BROKERS",
            "TEST_DATABASE_URL",
            "BIN",
            "QUICKSTART_COUNT",
        ] {
            assert!(!is_config_var(name), "{name}");
        }
        for name in [
            "KAFKA__BROKERS",
            "KAFAK__BROKERS",
            "LOG__LEVEL",
            "KAFKA",
            "shutdown_timeout",
            "PIPELINES",
        ] {
            assert!(is_config_var(name), "{name}");
        }
    }

    #[test]
    fn names_the_variable_for_a_key_path() {
        assert_eq!(env_var_name(&["kafka", "brokers"]), "SLUICE_KAFKA__BROKERS");
        assert_eq!(env_var_name(&["shutdown_timeout"]), "SLUICE_SHUTDOWN_TIMEOUT");
        assert_eq!(
            env_var_name(&["kafka", "properties", "enable.auto.commit"]),
            "SLUICE_KAFKA__PROPERTIES__ENABLE_AUTO_COMMIT"
        );
    }
}
