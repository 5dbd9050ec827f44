//! The optional Kafka dead-letter topic (`errors.dlq_topic`).
//!
//! At-least-once, unlike `sluice.dead_letters`: dead letters are produced
//! inside the flush, after they are inserted and *before* the Postgres
//! transaction commits, and the flush waits for the broker's acks. A produce
//! that fails fails the flush (retried as a transient failure); a flush that
//! fails after producing (its COMMIT lost, or fenced) produces them again on
//! retry or by the next owner. So every dead letter reaches the topic at
//! least once, some maybe twice. Producing after the commit instead would
//! lose the ones in flight at a crash.
//!
//! Each message carries the record's key, value and headers as read (the
//! value truncated like in the store) plus headers `sluice.pipeline`,
//! `sluice.topic`, `sluice.partition`, `sluice.offset`, `sluice.error_class`,
//! `sluice.sqlstate` (data errors) and `sluice.error`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::sink::dead_letter::{headers_from_json, Stored};

/// How long a flush waits for the dead-letter topic's acks.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer for one pipeline's dead-letter topic.
pub struct DlqProducer {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DlqProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DlqProducer").field("topic", &self.topic).finish()
    }
}

/// Consumer properties that also make sense for a producer: where the
/// brokers are and how to reach them securely.
fn producer_properties(consumer: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    consumer
        .iter()
        .filter(|(k, _)| {
            k.as_str() == "bootstrap.servers"
                || k.as_str() == "client.id"
                || k.starts_with("security.")
                || k.starts_with("sasl.")
                || k.starts_with("ssl.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl DlqProducer {
    pub fn new(consumer_properties: &BTreeMap<String, String>, topic: &str) -> rdkafka::error::KafkaResult<Self> {
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in producer_properties(consumer_properties) {
            config.set(k, v);
        }
        config.set("acks", "all").set("enable.idempotence", "true");
        Ok(DlqProducer {
            producer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Produces `letters` and waits for every ack; the first failure is the error.
    pub async fn send(&self, pipeline: &str, letters: &[Stored<'_>]) -> Result<(), String> {
        let mut pending = Vec::with_capacity(letters.len());
        for s in letters {
            let d = s.letter;
            let (partition, offset) = (s.partition.to_string(), s.offset.to_string());
            let mut headers = OwnedHeaders::new();
            for (key, value) in headers_from_json(&d.headers) {
                headers = headers.insert(Header {
                    key: &key,
                    value: value.as_deref(),
                });
            }
            let ours = [
                ("sluice.pipeline", pipeline),
                ("sluice.topic", s.topic),
                ("sluice.partition", &partition),
                ("sluice.offset", &offset),
                ("sluice.error_class", d.class.as_str()),
                ("sluice.sqlstate", d.sqlstate.as_deref().unwrap_or("")),
                ("sluice.error", &d.error),
            ];
            for (key, value) in ours {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
            if let Some(k) = d.key.as_deref() {
                record = record.key(k);
            }
            if let Some(v) = d.value.as_deref() {
                record = record.payload(v);
            }
            pending.push(self.producer.send(record, PRODUCE_TIMEOUT));
        }
        for delivery in pending {
            if let Err((err, _)) = delivery.await {
                return Err(format!("producing to dead-letter topic {}: {err}", self.topic));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_properties_reach_the_producer() {
        let consumer: BTreeMap<String, String> = [
            ("bootstrap.servers", "b:9092"),
            ("group.id", "g"),
            ("enable.auto.commit", "false"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "u"),
            ("ssl.ca.location", "/ca"),
            ("fetch.max.bytes", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let keys: Vec<String> = producer_properties(&consumer).into_keys().collect();
        assert_eq!(
            keys,
            [
                "bootstrap.servers",
                "sasl.username",
                "security.protocol",
                "ssl.ca.location"
            ]
        );
    }
}
