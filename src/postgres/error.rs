//! The one place that decides whether a database failure is transient.
//!
//! Transient failures (the database is down, slow, restarting, refusing
//! connections, or asked us to retry) are never a reason to skip a record:
//! the batch is retried. Data errors are the record's fault. Configuration
//! errors (missing table or column, permissions) need an operator.

use crate::model::ErrorClass;

/// Classifies by SQLSTATE, or by the kind of I/O failure.
pub fn classify(err: &sqlx::Error) -> ErrorClass {
    match err {
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref().unwrap_or("")),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Transient,
        _ => ErrorClass::Config,
    }
}

pub fn classify_sqlstate(code: &str) -> ErrorClass {
    match code {
        "40001" | "40P01" | "25006" => ErrorClass::Transient,
        c if c.starts_with("53") || c.starts_with("57P") || c.starts_with("08") => ErrorClass::Transient,
        // 55P03 lock_not_available and 55006 object_in_use clear by themselves;
        // 57014 query_canceled is statement_timeout firing on a slow database.
        "55P03" | "55006" | "57014" => ErrorClass::Transient,
        c if c.starts_with("22") || c.starts_with("23") => ErrorClass::Data,
        _ => ErrorClass::Config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        for code in ["40001", "40P01", "53300", "57P01", "57P03", "08006", "08001", "25006"] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Transient, "{code}");
        }
        for code in ["22001", "22P02", "23505", "23502", "23514", "23503"] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Data, "{code}");
        }
        for code in ["42P01", "42703", "42501", "28P01"] {
            assert_eq!(classify_sqlstate(code), ErrorClass::Config, "{code}");
        }
    }

    #[test]
    fn io_is_transient() {
        let err = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&err), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
    }
}
