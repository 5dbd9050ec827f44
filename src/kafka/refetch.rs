//! Reading records back from Kafka by their coordinates.
//!
//! The buffer keeps only the encoded row of a good record, not its raw
//! bytes (that would double memory). When the database refuses a row, its
//! raw key, value and headers are needed for the dead letter: the record is
//! still in Kafka (its offset is not committed yet), so the writer reads it
//! back with a consumer of its own that assigns partitions directly (no group
//! membership, no commits).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::message::raw_of;
use crate::model::record::{Coordinates, Raw};
use crate::pipeline::ports::ReadBack;

/// A lazily created assign-only consumer.
pub struct Refetcher {
    properties: BTreeMap<String, String>,
    consumer: Option<BaseConsumer>,
}

impl std::fmt::Debug for Refetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refetcher").finish_non_exhaustive()
    }
}

impl Refetcher {
    /// `properties`: the consumer's, so security settings carry over.
    pub fn new(mut properties: BTreeMap<String, String>) -> Refetcher {
        // Never joins the group (assign only) and never commits; an offset
        // that is gone must not silently jump elsewhere.
        properties.insert("enable.auto.commit".into(), "false".into());
        properties.insert("auto.offset.reset".into(), "error".into());
        // The records are there already: a fetch must not wait for more
        // (the default waits up to 500 ms, while the flush transaction is open).
        properties.insert("fetch.wait.max.ms".into(), "5".into());
        properties.insert("fetch.min.bytes".into(), "1".into());
        if let Some(group) = properties.get("group.id").cloned() {
            properties.insert("group.id".into(), format!("{group}.sluice-refetch"));
        }
        Refetcher {
            properties,
            consumer: None,
        }
    }
}

impl ReadBack for Refetcher {
    /// Reads the records at `wanted`, until about `budget` bytes of them are
    /// found; the flag says whether it looked for all of them (`false`: it
    /// stopped at the budget, ask again for the rest). What is not found
    /// within `timeout` (deleted by retention, or Kafka unreachable) is
    /// missing from the map. Blocking: call it from `spawn_blocking`.
    fn fetch(&mut self, wanted: &[Coordinates], timeout: Duration, budget: usize) -> (HashMap<Coordinates, Raw>, bool) {
        let mut found = HashMap::new();
        if wanted.is_empty() {
            return (found, true);
        }
        if self.consumer.is_none() {
            let mut config = rdkafka::ClientConfig::new();
            for (k, v) in &self.properties {
                config.set(k, v);
            }
            match config.create::<BaseConsumer>() {
                Ok(c) => self.consumer = Some(c),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot create the refetch consumer");
                    return (found, true);
                }
            }
        }
        let consumer = self.consumer.as_ref().expect("created above");
        // Per partition: from the lowest wanted offset up to the highest.
        let mut ranges: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
        for (t, p, o) in wanted {
            let r = ranges.entry((t.as_str(), *p)).or_insert((*o, *o));
            r.0 = r.0.min(*o);
            r.1 = r.1.max(*o);
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), (first, _)) in &ranges {
            if let Err(err) = tpl.add_partition_offset(t, *p, Offset::Offset(*first)) {
                tracing::warn!(error = %err, "refetch: bad partition");
            }
        }
        if let Err(err) = consumer.assign(&tpl) {
            tracing::warn!(error = %err, "refetch: assign failed");
            return (found, true);
        }
        let wanted_set: HashSet<(&str, i32, i64)> = wanted.iter().map(|(t, p, o)| (t.as_str(), *p, *o)).collect();
        let mut open: HashSet<(&str, i32)> = ranges.keys().copied().collect();
        let deadline = Instant::now() + timeout;
        let mut bytes = 0;
        let mut complete = true;
        while !open.is_empty() && Instant::now() < deadline {
            if bytes >= budget {
                complete = false;
                break;
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(err)) => tracing::debug!(error = %err, "refetch: consumer error"),
                Some(Ok(msg)) => {
                    let (t, p, o) = (msg.topic(), msg.partition(), msg.offset());
                    if wanted_set.contains(&(t, p, o)) {
                        let raw = raw_of(&msg);
                        bytes += raw.bytes();
                        found.insert((t.to_owned(), p, o), raw);
                    }
                    let done = ranges
                        .iter()
                        .find(|((rt, rp), (_, last))| *rt == t && *rp == p && o >= *last);
                    if let Some((key, _)) = done {
                        open.remove(key);
                    }
                }
            }
        }
        let _ = consumer.unassign();
        (found, complete)
    }
}
