//! The three kinds of write failure every layer tells apart.

/// What kind of failure a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry: connection lost or refused, pool timeout, serialization
    /// failure, deadlock, resources, shutdown, read-only transaction.
    Transient,
    /// The rows are at fault (SQLSTATE classes 22 and 23).
    Data,
    /// The mapping or the database setup is at fault (class 42, 28, …).
    Config,
}

impl ErrorClass {
    /// `transient`, `data`, `config`: the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Data => "data",
            ErrorClass::Config => "config",
        }
    }
}
