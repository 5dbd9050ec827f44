//! `[postgres]` and `[breaker]`: the database connection pool, TLS, and
//! the circuit breaker around every pipeline's database writes.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::error::{key, Issue};
use super::lenient_string;

/// The Postgres side.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:password@host:port/dbname?options`.
    /// A secret: `Debug` shows [`redacted_url`](Self::redacted_url).
    /// Default `"postgres://postgres@127.0.0.1:5432/postgres"`.
    #[serde(deserialize_with = "lenient_string")]
    pub url: String,
    /// Connections in the pool, shared by all pipelines' writers. At least 1.
    /// Default 4.
    pub pool_size: u32,
    /// How long to wait for a connection (connect or pool checkout) before
    /// the attempt counts as a transient failure. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` for sluice's sessions: a statement
    /// running longer is cancelled (a transient failure, retried). Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Client-side limit on one flush transaction, for when the server
    /// cannot even cancel (a network blackhole). Also the sessions'
    /// `idle_in_transaction_session_timeout`, so the server ends a
    /// transaction the network cut off and frees its locks. Default `"60s"`.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// TLS: `disable`, `allow`, `prefer`, `require`, `verify-ca` or
    /// `verify-full` (libpq's meanings). Overrides `sslmode` in the URL when
    /// set. Default: unset (the URL's, else `prefer`).
    pub sslmode: Option<SslMode>,
    /// PEM file with the root certificate(s) to verify the server with
    /// (`verify-ca` / `verify-full`). Default: unset (system roots).
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// PEM file with the client certificate to log in with (Postgres `cert`
    /// authentication, or `clientcert=verify-full` in `pg_hba.conf`). Set
    /// together with [`ssl_key`](Self::ssl_key). Default: unset.
    pub ssl_cert: Option<std::path::PathBuf>,
    /// PEM file with the private key of [`ssl_cert`](Self::ssl_cert)
    /// (PKCS#8, PKCS#1 or SEC1). Default: unset.
    pub ssl_key: Option<std::path::PathBuf>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The circuit breaker around every pipeline's database writes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures (connection lost or refused, timeouts,
    /// serialization failures, …) that open the breaker. Default 3.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time; doubles with each
    /// consecutive opening, with ±20 % jitter. Default `"1s"`.
    #[serde(with = "humantime_serde")]
    pub open_duration: Duration,
    /// Cap of the growing open duration. Default `"30s"`.
    #[serde(with = "humantime_serde")]
    pub max_open_duration: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            open_duration: Duration::from_secs(1),
            max_open_duration: Duration::from_secs(30),
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
            sslmode: None,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }
}

impl PostgresConfig {
    /// The URL with its password replaced by `***` (in the user info and in a
    /// `password=` query parameter), for logs and `/status`. A value that is
    /// not a URL is replaced entirely, since where its password is cannot be
    /// told.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("sslmode", &self.sslmode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("ssl_cert", &self.ssl_cert)
            .field("ssl_key", &self.ssl_key)
            .finish()
    }
}

impl PostgresConfig {
    pub(super) fn validate(&self) -> Result<(), Issue> {
        let pg = self;
        let at = |field: &str| vec![key("postgres"), key(field)];
        let scheme = pg.url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
            // The value is not echoed: it may hold a password.
            return Err((
                at("url"),
                "expected a URL such as postgres://user:password@host:5432/dbname".to_owned(),
            ));
        }
        if pg.pool_size == 0 {
            return Err((at("pool_size"), "must be at least 1".to_owned()));
        }
        if pg.connect_timeout.is_zero() {
            return Err((at("connect_timeout"), "must be greater than zero".to_owned()));
        }
        if pg.statement_timeout.is_zero() {
            return Err((at("statement_timeout"), "must be greater than zero".to_owned()));
        }
        if pg.write_timeout.is_zero() {
            return Err((at("write_timeout"), "must be greater than zero".to_owned()));
        }
        for (field, path) in [
            ("ssl_root_cert", &pg.ssl_root_cert),
            ("ssl_cert", &pg.ssl_cert),
            ("ssl_key", &pg.ssl_key),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err((at(field), format!("{} is not a readable file", path.display())));
                }
            }
        }
        // A certificate without its key (or the reverse) would make the
        // connection fall back to password login without a word.
        match (&pg.ssl_cert, &pg.ssl_key) {
            (Some(_), None) => {
                return Err((
                    at("ssl_key"),
                    "is required with postgres.ssl_cert (the client certificate's private key)".to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    at("ssl_cert"),
                    "is required with postgres.ssl_key (the client certificate it is the key of)".to_owned(),
                ))
            }
            _ => {}
        }
        Ok(())
    }
}

impl BreakerConfig {
    pub(super) fn validate(&self) -> Result<(), Issue> {
        let b = self;
        let at = |field: &str| vec![key("breaker"), key(field)];
        if b.failure_threshold == 0 {
            return Err((at("failure_threshold"), "must be at least 1".to_owned()));
        }
        if b.open_duration.is_zero() {
            return Err((at("open_duration"), "must be greater than zero".to_owned()));
        }
        if b.max_open_duration < b.open_duration {
            return Err((
                at("max_open_duration"),
                "must be at least breaker.open_duration".to_owned(),
            ));
        }
        Ok(())
    }
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "***".to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    // The user info ends at the last '@' of the authority, but a password
    // with an unencoded '/', '?' or '@' makes "the authority" ambiguous. The
    // last '@' anywhere is never before the real one, so the redacted span
    // always covers the password; an '@' in the query only hides too much.
    let at = rest.rfind('@');
    let (userinfo, after) = match at {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = scheme.to_owned();
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(userinfo),
        }
    }
    match after.split_once('?') {
        Some((authority_path, query)) => {
            out.push_str(authority_path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(after),
    }
    out
}
