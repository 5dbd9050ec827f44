//! The Kafka side: the consumer loop and its rebalance handling, reading
//! records back for dead letters, and the dead-letter topic producer.
//! Never imports [`crate::postgres`]: what it needs of the database comes
//! through the pipeline's ports ([`crate::pipeline::ports`]).

pub mod consumer;
pub mod dead_letter_topic;
pub mod lag;
pub mod message;
pub mod offsets;
pub mod refetch;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaResult;

/// A plain client of `properties` for metadata requests: it never
/// subscribes, so it joins no group.
pub fn metadata_client(properties: &std::collections::BTreeMap<String, String>) -> KafkaResult<BaseConsumer> {
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config.create()
}

/// The level librdkafka logs at: everything when a `debug` property asks
/// for librdkafka's debug contexts (`kafka.properties.debug = "fetch"`),
/// else warnings and errors. rdkafka would take it from the `log` crate,
/// which sluice does not use (it logs through `tracing`).
pub fn log_level(properties: &std::collections::BTreeMap<String, String>) -> RDKafkaLogLevel {
    if properties.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// Forwards one librdkafka log line to `tracing` (target `librdkafka`).
pub fn forward_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", facility, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}
