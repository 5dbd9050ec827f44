//! The optional Kafka dead-letter topic (`errors.dlq_topic`).
//!
//! At-least-once, unlike `sluice.dead_letters`: dead letters are produced
//! inside the flush, after they are inserted and *before* the Postgres
//! transaction commits, and the flush waits for the broker's acks. A produce
//! that fails fails the flush, which is retried with backoff — as a failure of
//! the dead-letter topic ([`DeadLetterTopicError`]), never as a database outage: it does
//! not count towards the database circuit breaker. A flush that fails after
//! producing (its COMMIT lost, or fenced) produces them again on retry or by
//! the next owner. So every dead letter reaches the topic at least once, some
//! maybe twice. Producing after the commit instead would lose the ones in
//! flight at a crash.
//!
//! Each message carries the record's key, value and headers as read (the
//! value truncated like in the store) plus headers `sluice.pipeline`,
//! `sluice.topic`, `sluice.partition`, `sluice.offset`, `sluice.error_class`,
//! `sluice.sqlstate` (data errors) and `sluice.error`.
//!
//! **Every dead letter must be deliverable**, or one huge record would fail
//! every flush of its pipeline for good. A message is cut to fit
//! [`MESSAGE_BUDGET`], under the producer's `message.max.bytes` and the
//! broker's default limit: the value first, then the record's own headers,
//! then the key, then `sluice.error` ([`fit`]). A cut message says so in
//! `sluice.truncated` (the value's length as dead-lettered), plus
//! `sluice.truncated.key` (the key's length) and `sluice.truncated.headers`
//! (how many of the record's headers were left out) when those were cut.
//! A broker with a lower limit answers `MessageSizeTooLarge`: that letter is
//! produced again on its own with half the budget, down to nothing left to
//! cut. The whole value stays in `sluice.dead_letters`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tracing::warn;

use crate::model::dead_letter::{headers_from_json, Stored};
use crate::pipeline::ports::{DeadLetterTopic, DeadLetterTopicError, SendFuture};

/// The longest a flush waits for the dead-letter topic's acks; less when
/// less is left of the flush's `postgres.write_timeout`.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The producer's `message.max.bytes` (librdkafka's default, set explicitly
/// because the budget follows it). librdkafka refuses a message whose key,
/// value and headers add up to more, and caps each produce request's batch at
/// it; Kafka's own default limit per batch (`message.max.bytes` of a broker,
/// `max.message.bytes` of a topic) is 1,048,588, above it.
const PRODUCER_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// What one dead-letter message may take, all told: a tenth under the
/// producer's limit.
pub const MESSAGE_BUDGET: usize = PRODUCER_MESSAGE_MAX_BYTES / 10 * 9;

/// A record's own framing in a batch (length, attributes, timestamp and
/// offset deltas, key and value lengths), with room to spare.
const RECORD_OVERHEAD: usize = 96;
/// One header's framing: its key and value lengths, as varints.
const HEADER_OVERHEAD: usize = 10;
/// Room for the `sluice.truncated*` headers of a cut message: three of them,
/// names up to 24 bytes, values up to 20 digits.
const MARKERS: usize = 3 * (HEADER_OVERHEAD + 24 + 20);

/// A dead letter the topic did not take.
#[derive(Debug, thiserror::Error)]
#[error("producing to dead-letter topic {topic}: {why}")]
pub struct ProduceError {
    pub topic: String,
    why: Why,
}

#[derive(Debug, thiserror::Error)]
enum Why {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("no ack within {0:?} (what was left of postgres.write_timeout, at most 30s)")]
    TimedOut(Duration),
    #[error("Kafka refuses as too large even a message cut down to its sluice.* headers")]
    TooLarge,
    #[error("the producer went away")]
    Canceled,
}

/// The sizes of what a dead letter's message would carry, framing included
/// where it is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub key: usize,
    pub value: usize,
    /// Each of the record's own headers, framed.
    pub headers: Vec<usize>,
    /// `sluice.error`'s value.
    pub error: usize,
    /// The other `sluice.*` headers, `sluice.error`'s name, and the record's framing.
    pub fixed: usize,
}

/// How much of each part a message keeps: byte counts of the key, the value
/// and `sluice.error`, and how many of the record's headers (the first ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    pub key: usize,
    pub value: usize,
    pub headers: usize,
    pub error: usize,
}

impl Parts {
    fn whole(&self) -> Fit {
        Fit {
            key: self.key,
            value: self.value,
            headers: self.headers.len(),
            error: self.error,
        }
    }

    /// The message's size when it keeps `fit` (without the truncation headers).
    pub fn size(&self, fit: &Fit) -> usize {
        self.fixed + fit.key + fit.value + self.headers[..fit.headers].iter().sum::<usize>() + fit.error
    }
}

/// What of a dead letter fits a message of at most `cap` bytes: all of it
/// when it fits; else cut the value first, then drop the record's headers
/// (last first), then cut the key, then `sluice.error`, until it fits with
/// room for the truncation headers. Whatever `cap`, the other `sluice.*`
/// headers stay whole: the fewest bytes a message takes is `parts.fixed`.
pub fn fit(parts: &Parts, cap: usize) -> Fit {
    let mut fit = parts.whole();
    let whole = parts.size(&fit);
    if whole <= cap {
        return fit;
    }
    let mut excess = whole + MARKERS - cap;
    let cut = excess.min(fit.value);
    fit.value -= cut;
    excess -= cut;
    while excess > 0 && fit.headers > 0 {
        fit.headers -= 1;
        excess = excess.saturating_sub(parts.headers[fit.headers]);
    }
    let cut = excess.min(fit.key);
    fit.key -= cut;
    excess -= cut;
    fit.error -= excess.min(fit.error);
    fit
}

/// A dead letter ready to be produced: its headers parsed, its sizes known.
struct Letter<'a> {
    stored: &'a Stored<'a>,
    /// The record's own headers.
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// The `sluice.*` headers but `sluice.error`.
    ours: [(&'static str, String); 6],
    parts: Parts,
}

impl<'a> Letter<'a> {
    fn new(pipeline: &str, stored: &'a Stored<'a>) -> Self {
        let d = stored.letter;
        let headers = headers_from_json(&d.headers);
        let ours = [
            ("sluice.pipeline", pipeline.to_owned()),
            ("sluice.topic", stored.topic.to_owned()),
            ("sluice.partition", stored.partition.to_string()),
            ("sluice.offset", stored.offset.to_string()),
            ("sluice.error_class", d.class.as_str().to_owned()),
            ("sluice.sqlstate", d.sqlstate.as_deref().unwrap_or("").to_owned()),
        ];
        let framed = |name: &str, value: usize| HEADER_OVERHEAD + name.len() + value;
        let parts = Parts {
            key: d.key.as_deref().map_or(0, <[u8]>::len),
            value: d.value.as_deref().map_or(0, <[u8]>::len),
            headers: headers
                .iter()
                .map(|(k, v)| framed(k, v.as_deref().map_or(0, <[u8]>::len)))
                .collect(),
            error: d.error.len(),
            fixed: RECORD_OVERHEAD
                + framed("sluice.error", 0)
                + ours.iter().map(|(k, v)| framed(k, v.len())).sum::<usize>(),
        };
        Letter {
            stored,
            headers,
            ours,
            parts,
        }
    }

    /// The message within `cap` bytes, to `topic`.
    fn record<'r>(&'r self, topic: &'r str, cap: usize) -> FutureRecord<'r, [u8], [u8]> {
        let d = self.stored.letter;
        let fit = fit(&self.parts, cap);
        let mut headers = OwnedHeaders::new();
        for (key, value) in &self.headers[..fit.headers] {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        for (key, value) in &self.ours {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut error_len = fit.error;
        while !d.error.is_char_boundary(error_len) {
            error_len -= 1;
        }
        headers = headers.insert(Header {
            key: "sluice.error",
            value: Some(&d.error.as_bytes()[..error_len]),
        });
        if fit != self.parts.whole() {
            let mut markers = vec![("sluice.truncated", self.parts.value)];
            if fit.key < self.parts.key {
                markers.push(("sluice.truncated.key", self.parts.key));
            }
            if fit.headers < self.parts.headers.len() {
                markers.push(("sluice.truncated.headers", self.parts.headers.len() - fit.headers));
            }
            for (key, n) in markers {
                headers = headers.insert(Header {
                    key,
                    value: Some(n.to_string().as_bytes()),
                });
            }
        }
        let mut record: FutureRecord<'r, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = d.key.as_deref() {
            record = record.key(&k[..fit.key]);
        }
        if let Some(v) = d.value.as_deref() {
            record = record.payload(&v[..fit.value]);
        }
        record
    }
}

/// Whether Kafka refused a message for its size (locally, or the broker).
fn too_large(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// A producer for one pipeline's dead-letter topic.
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterProducer")
            .field("topic", &self.topic)
            .finish()
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

impl DeadLetterProducer {
    pub fn new(consumer_properties: &BTreeMap<String, String>, topic: &str) -> rdkafka::error::KafkaResult<Self> {
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in producer_properties(consumer_properties) {
            config.set(k, v);
        }
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.max.bytes", PRODUCER_MESSAGE_MAX_BYTES.to_string())
            // librdkafka gives up on a letter no flush waits for any more.
            .set("message.timeout.ms", PRODUCE_TIMEOUT.as_millis().to_string());
        Ok(DeadLetterProducer {
            producer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    fn error(&self, why: Why) -> ProduceError {
        ProduceError {
            topic: self.topic.clone(),
            why,
        }
    }

    /// Produces `letters` and waits for every ack, by `deadline` (and within
    /// 30 s); the first failure is the error. All are sent at once; one the
    /// broker refuses as too large is sent again alone, with half the budget
    /// each time (see the module doc).
    pub async fn produce(&self, pipeline: &str, letters: &[Stored<'_>], deadline: Instant) -> Result<(), ProduceError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(deadline.min(started + PRODUCE_TIMEOUT));
        let letters: Vec<Letter<'_>> = letters.iter().map(|s| Letter::new(pipeline, s)).collect();
        let mut caps = vec![MESSAGE_BUDGET; letters.len()];
        let mut todo: Vec<usize> = (0..letters.len()).collect();
        let mut alone = false;
        while !todo.is_empty() {
            let mut refused = Vec::new();
            let mut pending = Vec::with_capacity(todo.len());
            for &i in &todo {
                match self.enqueue(&letters[i], caps[i], deadline, started).await? {
                    // Alone: each letter its own produce request, so a broker
                    // limit below the batch size is met by the letter alone.
                    Some(delivery) if alone => {
                        if !self.acked(delivery, deadline, started).await? {
                            refused.push(i);
                        }
                    }
                    Some(delivery) => pending.push((i, delivery)),
                    None => refused.push(i),
                }
            }
            for (i, delivery) in pending {
                if !self.acked(delivery, deadline, started).await? {
                    refused.push(i);
                }
            }
            for &i in &refused {
                if caps[i] == 0 {
                    return Err(self.error(Why::TooLarge));
                }
                caps[i] /= 2;
                let s = letters[i].stored;
                warn!(pipeline, topic = %self.topic, source_topic = s.topic, partition = s.partition,
                    offset = s.offset, cap = caps[i], "dead letter refused as too large, producing it smaller");
            }
            todo = refused;
            alone = true;
        }
        Ok(())
    }

    /// Hands one letter within `cap` bytes to librdkafka, waiting while its
    /// queue is full; `None` when it refuses the message as too large.
    async fn enqueue(
        &self,
        letter: &Letter<'_>,
        cap: usize,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Option<DeliveryFuture>, ProduceError> {
        loop {
            match self.producer.send_result(letter.record(&self.topic, cap)) {
                Ok(delivery) => return Ok(Some(delivery)),
                Err((err, _)) if too_large(&err) => return Ok(None),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(self.error(Why::TimedOut(started.elapsed())));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((err, _)) => return Err(self.error(Why::Kafka(err))),
            }
        }
    }

    /// Waits for one ack by `deadline`: `false` when the broker refused the
    /// message as too large.
    async fn acked(
        &self,
        delivery: DeliveryFuture,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<bool, ProduceError> {
        match tokio::time::timeout_at(deadline, delivery).await {
            Err(_) => Err(self.error(Why::TimedOut(started.elapsed()))),
            Ok(Err(_)) => Err(self.error(Why::Canceled)),
            Ok(Ok(Ok(_))) => Ok(true),
            Ok(Ok(Err((err, _)))) if too_large(&err) => Ok(false),
            Ok(Ok(Err((err, _)))) => Err(self.error(Why::Kafka(err))),
        }
    }
}

impl DeadLetterTopic for DeadLetterProducer {
    fn send<'a>(&'a self, pipeline: &'a str, letters: &'a [Stored<'a>], deadline: Instant) -> SendFuture<'a> {
        Box::pin(async move {
            self.produce(pipeline, letters, deadline)
                .await
                .map_err(|err| DeadLetterTopicError {
                    topic: err.topic,
                    source: Box::new(err.why),
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dead_letter::{DeadLetter, DeadLetterClass};
    use proptest::prelude::*;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::RDKafkaRespErr;

    fn parts(key: usize, value: usize, headers: &[usize], error: usize) -> Parts {
        Parts {
            key,
            value,
            headers: headers.to_vec(),
            error,
            fixed: 300,
        }
    }

    #[test]
    fn a_letter_within_the_budget_is_sent_whole() {
        let p = parts(10, MESSAGE_BUDGET - 300 - 10 - 60 - 40, &[20, 40], 40);
        assert_eq!(p.size(&p.whole()), MESSAGE_BUDGET);
        assert_eq!(fit(&p, MESSAGE_BUDGET), p.whole());
    }

    #[test]
    fn the_value_is_cut_to_fit_the_budget_with_room_for_the_markers() {
        // A 1 MiB value as stored for a record above max_record_bytes.
        let p = parts(5, 1_048_576, &[30, 40], 100);
        let f = fit(&p, MESSAGE_BUDGET);
        let others = 300 + 5 + 30 + 40 + 100;
        assert_eq!(
            f,
            Fit {
                key: 5,
                value: MESSAGE_BUDGET - MARKERS - others,
                headers: 2,
                error: 100
            }
        );
        assert_eq!(p.size(&f) + MARKERS, MESSAGE_BUDGET);
    }

    #[test]
    fn headers_then_key_then_error_go_when_the_value_is_not_enough() {
        let p = parts(1_000, 2_000, &[100, 200, 300], 500);
        // Without the value, 300 + 1,000 + 600 + 500 = 2,400 remain.
        let cap = 2_400 + MARKERS - 350;
        assert_eq!(
            fit(&p, cap),
            Fit {
                key: 1_000,
                value: 0,
                headers: 1,
                error: 500
            },
            "the last two headers go (500 bytes), the first stays"
        );
        let cap = 300 + 300 + 500 + MARKERS;
        assert_eq!(
            fit(&p, cap),
            Fit {
                key: 300,
                value: 0,
                headers: 0,
                error: 500
            }
        );
        let cap = 300 + 200 + MARKERS;
        assert_eq!(
            fit(&p, cap),
            Fit {
                key: 0,
                value: 0,
                headers: 0,
                error: 200
            }
        );
        let nothing = Fit {
            key: 0,
            value: 0,
            headers: 0,
            error: 0,
        };
        assert_eq!(fit(&p, 0), nothing, "the fixed sluice.* headers are all that is left");
        assert_eq!(p.size(&nothing), 300);
    }

    proptest! {
        /// A cut message with its markers never exceeds the cap (unless
        /// nothing is left to cut), never keeps more than the letter has, and
        /// cuts nothing of a later part while an earlier one has bytes left.
        #[test]
        fn a_cut_message_fits(
            key in 0usize..5_000,
            value in 0usize..2_000_000,
            headers in proptest::collection::vec(11usize..3_000, 0..6),
            error in 0usize..3_000,
            cap in 0usize..1_200_000,
        ) {
            let p = parts(key, value, &headers, error);
            let f = fit(&p, cap);
            if f == p.whole() {
                prop_assert!(p.size(&f) <= cap);
            } else {
                prop_assert!(p.size(&f) + MARKERS <= cap || p.size(&f) == p.fixed);
                prop_assert!(f.value == 0 || (f.headers == headers.len() && f.key == key && f.error == error));
                prop_assert!(f.headers == headers.len() || (f.value == 0));
                prop_assert!(f.key == key || (f.value == 0 && f.headers == 0));
                prop_assert!(f.error == error || (f.value == 0 && f.headers == 0 && f.key == 0));
            }
            prop_assert!(f.key <= key && f.value <= value && f.headers <= headers.len() && f.error <= error);
        }
    }

    fn letter(key: &[u8], value: Vec<u8>) -> DeadLetter {
        DeadLetter {
            key: Some(key.into()),
            value: Some(value.into()),
            headers: r#"[{"key":"trace","value":"abc"}]"#.into(),
            class: DeadLetterClass::Decode,
            sqlstate: None,
            error: "value is 1200000 bytes, above max_record_bytes".into(),
        }
    }

    fn stored(letter: &DeadLetter) -> Stored<'_> {
        Stored {
            topic: "orders",
            partition: 2,
            offset: 41,
            timestamp_ms: None,
            letter,
        }
    }

    fn header_map(headers: &OwnedHeaders) -> BTreeMap<String, String> {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    /// A record's whole librdkafka size: key, value and headers.
    fn message_bytes(record: &FutureRecord<'_, [u8], [u8]>) -> usize {
        record.key.map_or(0, <[u8]>::len)
            + record.payload.map_or(0, <[u8]>::len)
            + record.headers.as_ref().map_or(0, |h| {
                h.iter()
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + HEADER_OVERHEAD)
                    .sum()
            })
    }

    #[test]
    fn a_huge_dead_letter_is_cut_under_the_budget_and_says_so() {
        let value: Vec<u8> = (0..1_048_576u32).map(|i| b'a' + (i % 26) as u8).collect();
        let d = letter(b"k1", value.clone());
        let s = stored(&d);
        let l = Letter::new("p", &s);
        let record = l.record("dlq", MESSAGE_BUDGET);
        assert!(message_bytes(&record) + RECORD_OVERHEAD <= MESSAGE_BUDGET);
        let payload = record.payload.unwrap();
        assert!(payload.len() > MESSAGE_BUDGET - 1_000, "{}", payload.len());
        assert_eq!(payload, &value[..payload.len()], "a prefix of the value");
        assert_eq!(record.key, Some(&b"k1"[..]));
        let h = header_map(record.headers.as_ref().unwrap());
        assert_eq!(h["sluice.truncated"], "1048576");
        assert_eq!(h["trace"], "abc");
        assert_eq!(h["sluice.offset"], "41");
        assert!(!h.contains_key("sluice.truncated.key"));

        // A small one goes whole, without the marker.
        let d = letter(b"k2", b"{not json".to_vec());
        let s = stored(&d);
        let l = Letter::new("p", &s);
        let record = l.record("dlq", MESSAGE_BUDGET);
        assert_eq!(record.payload, Some(&b"{not json"[..]));
        assert!(!header_map(record.headers.as_ref().unwrap()).contains_key("sluice.truncated"));
    }

    /// Every message of `topic` partition 0 of a mock cluster (whose high
    /// watermarks are exact): (value length, headers).
    fn read_all(bootstrap: &str, topic: &str) -> Vec<(usize, BTreeMap<String, String>)> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (seen.len() as i64) < high && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let headers = m.headers().map(|h| h.detach()).unwrap_or_else(OwnedHeaders::new);
                seen.push((m.payload().map_or(0, <[u8]>::len), header_map(&headers)));
            }
        }
        assert_eq!(seen.len() as i64, high, "read up to the high watermark");
        seen
    }

    /// A broker whose limit is below the budget answers MessageSizeTooLarge:
    /// the letter goes again alone, at half the budget, then a quarter.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_letter_the_broker_refuses_as_too_large_goes_again_smaller() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("dlq", 1, 1).expect("topic");
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".to_owned(), cluster.bootstrap_servers());
        let producer = DeadLetterProducer::new(&props, "dlq").expect("producer");
        let too_large = RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
        cluster.request_errors(rdkafka::types::RDKafkaApiKey::Produce, &[too_large, too_large]);
        let value: Vec<u8> = vec![b'x'; 1_048_576];
        let d = letter(b"k", value);
        let letters = [stored(&d)];
        producer
            .produce("p", &letters, Instant::now() + Duration::from_secs(20))
            .await
            .expect("delivered");
        let seen = read_all(&cluster.bootstrap_servers(), "dlq");
        assert_eq!(seen.len(), 1, "one message: {seen:?}");
        let (len, headers) = &seen[0];
        assert!(*len < MESSAGE_BUDGET / 4 && *len > MESSAGE_BUDGET / 4 - 1_000, "{len}");
        assert_eq!(headers["sluice.truncated"], "1048576");
    }

    /// No broker: the send gives up by its deadline, not after 30 s.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_send_gives_up_by_its_deadline() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("dlq", 1, 1).expect("topic");
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".to_owned(), cluster.bootstrap_servers());
        let producer = DeadLetterProducer::new(&props, "dlq").expect("producer");
        cluster.broker_down(1).expect("broker down");
        let d = letter(b"k", b"v".to_vec());
        let letters = [stored(&d)];
        let started = Instant::now();
        let err = producer
            .produce("p", &letters, started + Duration::from_millis(1500))
            .await
            .expect_err("no broker");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(2500),
            "{took:?}"
        );
        assert!(matches!(err.why, Why::TimedOut(_)), "{err}");
        assert_eq!(err.topic, "dlq");
    }

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
