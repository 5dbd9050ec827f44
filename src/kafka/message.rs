//! What sluice keeps of a consumed message, taken from librdkafka's types
//! into the plain data of [`crate::model`].

use rdkafka::message::{Headers, Message};

use crate::model::dead_letter::{headers_json, DeadLetter};
use crate::model::record::{Raw, RecordMeta, TraceParent};
use crate::row::DecodeError;

/// What a dead letter keeps of a consumed record.
pub fn raw_of<M: Message>(msg: &M) -> Raw {
    Raw {
        key: msg.key().map(Box::from),
        value: msg.payload().map(Box::from),
        headers: message_headers(msg),
    }
}

/// A consumed record's headers, as [`headers_json`] stores them.
pub fn message_headers<M: Message>(msg: &M) -> Box<str> {
    match msg.headers() {
        Some(h) => headers_json(h.iter().map(|h| (h.key, h.value))),
        None => headers_json(std::iter::empty()),
    }
}

/// The record's trace context, when it carries a valid `traceparent`
/// header. Allocates only then.
pub fn trace_parent<M: Message>(msg: &M) -> Option<Box<TraceParent>> {
    let headers = msg.headers()?;
    let header = headers.iter().find(|h| h.key.eq_ignore_ascii_case("traceparent"))?;
    TraceParent::parse(header.value?).map(Box::new)
}

/// What flush telemetry needs of a record: its Kafka timestamp and, when
/// `traces` (flush spans are exported), its producer trace context. Reading
/// the context parses the record's headers, which librdkafka does with an
/// allocation even for a record without any: a tenth of the consumer
/// thread's time when it was done for every record (`bench/RESULTS.md`).
pub fn record_meta<M: Message>(msg: &M, traces: bool) -> RecordMeta {
    RecordMeta {
        timestamp_ms: msg.timestamp().to_millis(),
        trace: if traces { trace_parent(msg) } else { None },
    }
}

/// The dead letter of a consumed record: `error` from the encoder, or
/// `None` when the value is above `max_record_bytes` (not decoded).
pub fn dead_letter_of<M: Message>(msg: &M, error: Option<&DecodeError>, max_record_bytes: usize) -> DeadLetter {
    let headers = message_headers(msg);
    match (error, msg.payload()) {
        (Some(error), value) => DeadLetter::decode(msg.key(), value, headers, error, max_record_bytes),
        (None, Some(value)) => DeadLetter::oversized(msg.key(), value, headers, max_record_bytes),
        (None, None) => DeadLetter::decode(
            msg.key(),
            None,
            headers,
            &DecodeError::for_record("null value (tombstone)"),
            max_record_bytes,
        ),
    }
}
