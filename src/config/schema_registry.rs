//! `[schema_registry]`: the Confluent-compatible Schema Registry that
//! `avro`, `protobuf` and `json_schema` records name their writer's schema
//! in. Needed only when a pipeline uses one of those formats.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::{key, Issue};
use super::lenient_opt_string;

/// Where writer's schemas come from.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// The registry's base URL, `http://` or `https://`
    /// (`https://registry:8081`). Required when a pipeline's `value_format`
    /// or `key_format` is `avro`, `protobuf` or `json_schema`. Default unset.
    pub url: Option<String>,
    /// HTTP basic-auth user. Default unset.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub username: Option<String>,
    /// HTTP basic-auth password (a secret: never logged, shown as `***`;
    /// `SLUICE_SCHEMA_REGISTRY__PASSWORD_FILE` reads it from a file).
    /// Default unset. A number is taken as its text (from the environment,
    /// a digits-only password reaches serde as an integer).
    #[serde(deserialize_with = "lenient_opt_string")]
    pub password: Option<String>,
    /// PEM file of the CA certificates that sign the registry's TLS
    /// certificate, instead of the built-in web PKI roots. Default unset.
    pub ssl_root_cert: Option<PathBuf>,
    /// How long one registry request may take before it counts as an
    /// outage. Default `"5s"`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many compiled schemas are kept (the oldest is dropped first).
    /// Schemas are fetched by id once and kept; at least 1. Default 1000.
    pub cache_capacity: usize,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: None,
            username: None,
            password: None,
            ssl_root_cert: None,
            request_timeout: Duration::from_secs(5),
            cache_capacity: 1000,
        }
    }
}

impl fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("request_timeout", &self.request_timeout)
            .field("cache_capacity", &self.cache_capacity)
            .finish()
    }
}

impl SchemaRegistryConfig {
    pub(super) fn validate(&self) -> Result<(), Issue> {
        let at = |field: &str| vec![key("schema_registry"), key(field)];
        if let Some(url) = &self.url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .filter(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if rest.is_none() {
                return Err((
                    at("url"),
                    format!("expected an http:// or https:// URL such as \"http://registry:8081\", found {url:?}"),
                ));
            }
            if url.contains('@') {
                return Err((
                    at("url"),
                    "must not hold credentials: set schema_registry.username and password".to_owned(),
                ));
            }
        }
        if self.password.is_some() && self.username.is_none() {
            return Err((at("password"), "is set without schema_registry.username".to_owned()));
        }
        if self.request_timeout.is_zero() {
            return Err((at("request_timeout"), "must be greater than zero".to_owned()));
        }
        if self.cache_capacity == 0 {
            return Err((at("cache_capacity"), "must be at least 1".to_owned()));
        }
        Ok(())
    }
}
