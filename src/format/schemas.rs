//! Writer's schemas by id: fetched once from a [`SchemaSource`] (the
//! Schema Registry client lives in `crate::registry`), compiled, and kept
//! in a bounded cache. A registry that cannot be reached is *unavailable*:
//! the caller holds its records and tries again after a backoff that
//! doubles up to [`MAX_BACKOFF`], and meanwhile no request is made (the
//! registry's circuit breaker). An id the registry does not know, or a
//! schema that does not compile, is the record's fault: a dead letter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::avro::AvroSchema;
use super::protobuf::ProtoSchema;
use super::{Format, FormatError};

/// The kind of a registered schema (`schemaType`; absent means Avro).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    Avro,
    Protobuf,
    Json,
}

impl SchemaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaKind::Avro => "AVRO",
            SchemaKind::Protobuf => "PROTOBUF",
            SchemaKind::Json => "JSON",
        }
    }
}

/// A schema as registered: its text and the texts of the schemas it
/// references (by reference name), resolved transitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    pub kind: SchemaKind,
    pub text: String,
    pub references: Vec<(String, String)>,
}

/// Why a schema could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The registry did not answer, answered with a server error, refused
    /// the credentials or answered something that is not a schema. The
    /// records wait (nothing is dead-lettered for it) and the error is
    /// logged until someone fixes the registry or the configuration.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
    /// The registry answered that there is no such schema.
    #[error("{0}")]
    NotFound(String),
}

/// Where schemas come from (the Schema Registry client implements it).
pub trait SchemaSource: Send + Sync {
    /// The schema registered under `id`.
    fn fetch(&self, id: u32) -> Result<RegisteredSchema, FetchError>;
    /// The latest version registered under `subject` (`<topic>-value`).
    fn latest(&self, subject: &str) -> Result<RegisteredSchema, FetchError>;
}

/// A compiled writer's schema.
#[derive(Debug)]
pub(crate) enum Compiled {
    Avro(Box<AvroSchema>),
    Protobuf(ProtoSchema),
    Json,
}

/// The registry's backoff after the first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// … and at most.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The cache and breaker in front of a [`SchemaSource`].
pub struct Schemas {
    source: Box<dyn SchemaSource>,
    capacity: usize,
    inner: Mutex<Inner>,
    pub stats: SchemaStats,
}

/// What `/status` and the metrics show of the registry.
#[derive(Debug, Default)]
pub struct SchemaStats {
    pub fetched: AtomicU64,
    pub not_found: AtomicU64,
    pub unavailable: AtomicU64,
}

#[derive(Default)]
struct Inner {
    cache: HashMap<u32, Arc<Compiled>>,
    /// The schemas as the registry served them, beside their compiled form
    /// (for the columns a schema gives; evicted together).
    served: HashMap<u32, Arc<RegisteredSchema>>,
    /// Insertion order, for evicting the oldest when full.
    order: VecDeque<u32>,
    down_until: Option<Instant>,
    backoff: Option<Duration>,
    last_error: Option<String>,
}

/// The registry as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryView {
    pub available: bool,
    pub retry_in: Option<Duration>,
    pub last_error: Option<String>,
    pub cached: usize,
}

impl Schemas {
    /// At most `capacity` compiled schemas are kept (at least 1).
    pub fn new(source: Box<dyn SchemaSource>, capacity: usize) -> Schemas {
        Schemas {
            source,
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
            stats: SchemaStats::default(),
        }
    }

    /// The writer's schema `id`, for a record of `format`.
    pub(crate) fn get(&self, id: u32, format: Format, now: Instant) -> Result<Arc<Compiled>, FormatError> {
        let mut inner = self.inner.lock().expect("schema cache lock");
        if let Some(hit) = inner.cache.get(&id) {
            return Ok(Arc::clone(hit));
        }
        if let Some(until) = inner.down_until.filter(|until| *until > now) {
            return Err(FormatError::Unavailable {
                until,
                why: inner.last_error.clone().unwrap_or_default(),
            });
        }
        match self.source.fetch(id) {
            Ok(registered) => {
                inner.down_until = None;
                inner.backoff = None;
                inner.last_error = None;
                self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                let compiled = Arc::new(compile(id, &registered, format)?);
                if inner.cache.len() >= self.capacity {
                    if let Some(oldest) = inner.order.pop_front() {
                        inner.cache.remove(&oldest);
                        inner.served.remove(&oldest);
                    }
                }
                inner.cache.insert(id, Arc::clone(&compiled));
                inner.served.insert(id, Arc::new(registered));
                inner.order.push_back(id);
                Ok(compiled)
            }
            Err(FetchError::Unavailable(why)) => {
                self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                let backoff = inner.backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                inner.backoff = Some(backoff);
                let until = now + backoff;
                inner.down_until = Some(until);
                let why = format!("schema id {id}: {why}");
                inner.last_error = Some(why.clone());
                Err(FormatError::Unavailable { until, why })
            }
            Err(FetchError::NotFound(why)) => {
                self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                Err(FormatError::Record(format!(
                    "schema id {id} is not in the schema registry: {why}"
                )))
            }
        }
    }

    /// The schema `id` as the registry served it, when it is cached (every
    /// schema a record was just decoded with is).
    pub fn served(&self, id: u32) -> Option<Arc<RegisteredSchema>> {
        self.inner.lock().expect("schema cache lock").served.get(&id).cloned()
    }

    pub fn view(&self, now: Instant) -> RegistryView {
        let inner = self.inner.lock().expect("schema cache lock");
        let retry_in = inner.down_until.filter(|u| *u > now).map(|u| u - now);
        RegistryView {
            available: retry_in.is_none(),
            retry_in,
            last_error: inner.last_error.clone(),
            cached: inner.cache.len(),
        }
    }
}

fn compile(id: u32, registered: &RegisteredSchema, format: Format) -> Result<Compiled, FormatError> {
    let expected = match format {
        Format::Avro => SchemaKind::Avro,
        Format::Protobuf => SchemaKind::Protobuf,
        Format::JsonSchema => SchemaKind::Json,
        other => unreachable!("{other:?} has no registered schema"),
    };
    if registered.kind != expected {
        return Err(FormatError::Record(format!(
            "schema id {id} is a {} schema, but the pipeline reads {}",
            registered.kind.as_str(),
            format.as_str()
        )));
    }
    let bad = |why: String| FormatError::Record(format!("schema id {id}: {why}"));
    Ok(match expected {
        SchemaKind::Avro => {
            let texts: Vec<String> = registered.references.iter().map(|(_, t)| t.clone()).collect();
            Compiled::Avro(Box::new(AvroSchema::compile(&registered.text, &texts).map_err(bad)?))
        }
        SchemaKind::Protobuf => {
            Compiled::Protobuf(ProtoSchema::compile(&registered.text, &registered.references).map_err(bad)?)
        }
        SchemaKind::Json => Compiled::Json,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// A registry in memory that can be switched off.
    pub(crate) struct Fixed {
        pub schemas: HashMap<u32, RegisteredSchema>,
        pub down: Arc<AtomicBool>,
        pub calls: Arc<AtomicU64>,
    }

    impl SchemaSource for Fixed {
        fn fetch(&self, id: u32) -> Result<RegisteredSchema, FetchError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(FetchError::Unavailable("connection refused".into()));
            }
            self.schemas
                .get(&id)
                .cloned()
                .ok_or_else(|| FetchError::NotFound("Schema not found".into()))
        }

        fn latest(&self, subject: &str) -> Result<RegisteredSchema, FetchError> {
            Err(FetchError::NotFound(format!("subject {subject} not found")))
        }
    }

    pub(crate) fn avro(text: &str) -> RegisteredSchema {
        RegisteredSchema {
            kind: SchemaKind::Avro,
            text: text.to_owned(),
            references: Vec::new(),
        }
    }

    #[test]
    fn fetched_once_bounded_and_backed_off() {
        let down = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let schemas: HashMap<u32, RegisteredSchema> = (1..=3).map(|id| (id, avro(r#""string""#))).collect();
        let s = Schemas::new(
            Box::new(Fixed {
                schemas,
                down: Arc::clone(&down),
                calls: Arc::clone(&calls),
            }),
            2,
        );
        let t0 = Instant::now();
        s.get(1, Format::Avro, t0).unwrap();
        s.get(1, Format::Avro, t0).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1, "cached after the first fetch");
        s.get(2, Format::Avro, t0).unwrap();
        s.get(3, Format::Avro, t0).unwrap();
        assert_eq!(s.view(t0).cached, 2, "bounded");
        s.get(1, Format::Avro, t0).unwrap();
        assert_eq!(
            calls.load(Ordering::Relaxed),
            4,
            "the oldest was evicted and fetched again"
        );
        // Unknown id: the record's fault.
        assert!(
            matches!(s.get(9, Format::Avro, t0), Err(FormatError::Record(e)) if e.contains("not in the schema registry"))
        );
        // Wrong kind: the record's fault.
        assert!(s.get(3, Format::Protobuf, t0).is_ok(), "cached ids are not re-checked");
        // Outage: unavailable, then no request until the backoff passes.
        down.store(true, Ordering::Relaxed);
        let before = calls.load(Ordering::Relaxed);
        let Err(FormatError::Unavailable { until, .. }) = s.get(7, Format::Avro, t0) else {
            panic!("expected unavailable")
        };
        assert_eq!(until, t0 + FIRST_BACKOFF);
        assert!(matches!(
            s.get(7, Format::Avro, t0 + Duration::from_millis(100)),
            Err(FormatError::Unavailable { .. })
        ));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            before + 1,
            "no request while the breaker is open"
        );
        let Err(FormatError::Unavailable { until, .. }) = s.get(7, Format::Avro, t0 + FIRST_BACKOFF) else {
            panic!("expected unavailable")
        };
        assert_eq!(until, t0 + FIRST_BACKOFF + FIRST_BACKOFF * 2, "the backoff doubles");
        assert!(!s.view(t0 + FIRST_BACKOFF).available);
        // Cached schemas keep decoding during the outage.
        s.get(1, Format::Avro, t0 + FIRST_BACKOFF).unwrap();
        down.store(false, Ordering::Relaxed);
        let later = t0 + Duration::from_secs(10);
        assert!(matches!(s.get(7, Format::Avro, later), Err(FormatError::Record(_))));
        assert!(s.view(later).available);
    }
}
