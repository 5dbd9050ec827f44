//! The Schema Registry client: the part of Confluent's REST API a reader
//! needs — `GET /schemas/ids/{id}` for a writer's schema, and
//! `GET /subjects/{subject}/versions/{version}` for the schemas it
//! references (resolved transitively) — over blocking HTTP (`ureq`, with
//! rustls), called from the consumer thread only on a cache miss
//! ([`crate::format::Schemas`] caches and backs off).
//!
//! Protobuf schemas are asked for with `format=serialized` (a base64
//! `FileDescriptorProto`, exactly what the official serializers
//! registered); other kinds ignore the parameter.
//!
//! A 404 is [`FetchError::NotFound`] (the record's schema does not
//! exist: a dead letter). Everything else that is not a schema — no
//! answer, a timeout, 5xx, 401/403, a malformed body — is
//! [`FetchError::Unavailable`]: records wait rather than be dead-lettered
//! for a registry problem, and the error is logged.

use serde::Deserialize;

use crate::config::SchemaRegistryConfig;
use crate::format::{FetchError, RegisteredSchema, SchemaKind, SchemaSource};

/// How deep references may nest (a cycle is an error, not a hang).
const MAX_REFERENCE_DEPTH: usize = 32;

/// A registry client built from `[schema_registry]`.
pub struct Registry {
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema_registry.ssl_root_cert {path}: {why}")]
    RootCert { path: String, why: String },
    #[error("schema_registry.url is not set")]
    NoUrl,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    message: Option<String>,
}

impl Registry {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Registry, RegistryError> {
        use base64::Engine as _;
        let base = config
            .url
            .as_deref()
            .ok_or(RegistryError::NoUrl)?
            .trim_end_matches('/')
            .to_owned();
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(config.request_timeout))
            .http_status_as_error(false)
            .user_agent("sluice");
        if let Some(path) = &config.ssl_root_cert {
            let bad = |why: String| RegistryError::RootCert {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("holds no PEM certificate".to_owned()));
            }
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        let authorization = config.username.as_ref().map(|user| {
            let pair = format!("{user}:{}", config.password.as_deref().unwrap_or(""));
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        Ok(Registry {
            base,
            agent: builder.build().into(),
            authorization,
        })
    }

    /// GETs `path` under the base URL: the parsed answer, `Ok(None)` on 404.
    fn get(&self, path: &str) -> Result<Option<SchemaAnswer>, FetchError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .get(&url)
            .header("Accept", "application/vnd.schemaregistry.v1+json, application/json");
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = request
            .call()
            .map_err(|e| FetchError::Unavailable(format!("GET {path}: {e}")))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| FetchError::Unavailable(format!("GET {path}: reading the answer: {e}")))?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| FetchError::Unavailable(format!("GET {path}: not a schema: {e}"))),
            404 => Ok(None),
            _ => {
                let message = serde_json::from_str::<ErrorAnswer>(&body)
                    .ok()
                    .and_then(|e| e.message)
                    .unwrap_or_else(|| body.chars().take(200).collect());
                Err(FetchError::Unavailable(format!("GET {path}: HTTP {status}: {message}")))
            }
        }
    }

    /// The texts of `references`, and of theirs, by reference name.
    fn resolve(
        &self,
        references: Vec<Reference>,
        depth: usize,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), FetchError> {
        if depth > MAX_REFERENCE_DEPTH {
            return Err(FetchError::Unavailable(format!(
                "schema references nest deeper than {MAX_REFERENCE_DEPTH} (a cycle?)"
            )));
        }
        for r in references {
            if out.iter().any(|(name, _)| *name == r.name) {
                continue;
            }
            let path = format!(
                "/subjects/{}/versions/{}?format=serialized",
                encode_path(&r.subject),
                r.version
            );
            let answer = self.get(&path)?.ok_or_else(|| {
                FetchError::NotFound(format!(
                    "referenced schema {:?} (subject {:?} version {}) is not in the registry",
                    r.name, r.subject, r.version
                ))
            })?;
            // Dependencies first, as a compiler wants them.
            self.resolve(answer.references, depth + 1, out)?;
            out.push((r.name, answer.schema));
        }
        Ok(())
    }
}

impl SchemaSource for Registry {
    fn fetch(&self, id: u32) -> Result<RegisteredSchema, FetchError> {
        let answer = self
            .get(&format!("/schemas/ids/{id}?format=serialized"))?
            .ok_or_else(|| FetchError::NotFound(format!("GET /schemas/ids/{id}: 404")))?;
        self.registered(answer, &format!("schema id {id}"))
    }

    fn latest(&self, subject: &str) -> Result<RegisteredSchema, FetchError> {
        let path = format!("/subjects/{}/versions/latest?format=serialized", encode_path(subject));
        let answer = self
            .get(&path)?
            .ok_or_else(|| FetchError::NotFound(format!("subject {subject:?} has no schema in the registry")))?;
        self.registered(answer, &format!("subject {subject:?}"))
    }
}

impl Registry {
    /// An answer's schema with its references resolved; `what` names it.
    fn registered(&self, answer: SchemaAnswer, what: &str) -> Result<RegisteredSchema, FetchError> {
        let kind = match answer.schema_type.as_deref() {
            None | Some("AVRO") => SchemaKind::Avro,
            Some("PROTOBUF") => SchemaKind::Protobuf,
            Some("JSON") => SchemaKind::Json,
            Some(other) => return Err(FetchError::NotFound(format!("{what} has unknown schemaType {other:?}"))),
        };
        let mut references = Vec::new();
        self.resolve(answer.references, 0, &mut references)?;
        Ok(RegisteredSchema {
            kind,
            text: answer.schema,
            references,
        })
    }
}

/// Percent-encodes a path segment (subjects may hold `/`, as Protobuf
/// import subjects do).
fn encode_path(segment: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_percent_encoded() {
        assert_eq!(encode_path("sluice/common.proto"), "sluice%2Fcommon.proto");
        assert_eq!(encode_path("orders-value"), "orders-value");
    }
}
