//! The consumer lag poller: every `telemetry.lag_interval`, on a thread
//! and a Kafka client of its own (metadata requests only, no group
//! membership), high watermark − stored position of every partition the
//! pipelines hold, into [`LagTable`]. The consumer loop never waits on it
//! (fetching watermarks is a blocking network call). The stored position
//! is the one in `sluice.offsets` as this instance last read or wrote it
//! (`PartState::stored`), so the lag counts every record not yet in
//! Postgres, buffered ones included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use tracing::{debug, warn};

use crate::model::offsets::NextOffset;
use crate::model::Topics;
use crate::pipeline::Pipeline;
use crate::telemetry::lag::{lag, position, LagTable, PartitionLag};

/// Measures one partition.
pub fn measure(
    client: &BaseConsumer,
    topic: &str,
    partition: i32,
    stored: Option<NextOffset>,
    reset_earliest: bool,
    timeout: Duration,
) -> KafkaResult<(i64, i64)> {
    let (low, high) = client.fetch_watermarks(topic, partition, timeout)?;
    let position = position(stored, low, high, reset_earliest);
    Ok((high, position))
}

/// The client: the consumer's connection properties, without the group.
fn client(properties: &BTreeMap<String, String>) -> KafkaResult<BaseConsumer> {
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        if k != "group.id" {
            config.set(k, v);
        }
    }
    config.create()
}

/// Starts the poller thread; it ends when `stop` is set.
pub fn spawn_poller(
    pipelines: Vec<Arc<Pipeline>>,
    topics: Arc<Topics>,
    reset_earliest: bool,
    table: Arc<LagTable>,
    properties: &BTreeMap<String, String>,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client = client(properties)?;
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    std::thread::Builder::new().name("sluice-lag".into()).spawn(move || {
        let mut failing = false;
        while !stop.load(Ordering::Relaxed) {
            let round = Instant::now();
            let mut targets = Vec::new();
            for (index, p) in pipelines.iter().enumerate() {
                let state = p.lock();
                targets.extend(state.partitions.iter().map(|(tp, s)| (index, *tp, s.stored)));
            }
            let mut lags = Vec::with_capacity(targets.len());
            for (pipeline, tp, stored) in targets {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let topic = topics.name(tp.topic);
                match measure(&client, topic, tp.partition, stored, reset_earliest, timeout) {
                    Ok((high, position)) => lags.push(PartitionLag {
                        pipeline,
                        tp,
                        lag: lag(high, position),
                        high,
                        position,
                    }),
                    Err(err) => {
                        if !failing {
                            warn!(%topic, partition = tp.partition, error = %err, "measuring consumer lag failed");
                        }
                        failing = true;
                        debug!(%topic, partition = tp.partition, error = %err, "measuring consumer lag failed");
                    }
                }
            }
            if !lags.is_empty() {
                failing = false;
            }
            lags.sort_by_key(|l| (l.pipeline, l.tp));
            table.replace(lags);
            while round.elapsed() < interval && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100).min(interval));
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    #[test]
    fn lag_is_high_watermark_minus_the_stored_position() {
        assert_eq!(position(Some(NextOffset(7)), 2, 10, true), 7);
        assert_eq!(position(None, 2, 10, true), 2, "earliest: from the low watermark");
        assert_eq!(position(None, 2, 10, false), 10, "latest: nothing to catch up");
        assert_eq!(lag(10, 7), 3);
        assert_eq!(lag(10, 12), 0, "never negative");
    }

    /// Exact figures against librdkafka's mock cluster (tansu's high
    /// watermarks read low; see ENVIRONMENT.md).
    #[test]
    fn measures_exact_lag_against_a_mock_cluster() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("lagged", 2, 1).expect("topic");
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        for i in 0..25 {
            let key = i.to_string();
            producer
                .send(BaseRecord::to("lagged").key(&key).payload("x").partition(i % 2))
                .expect("send");
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".to_owned(), cluster.bootstrap_servers());
        props.insert("group.id".to_owned(), "ignored".to_owned());
        let client = client(&props).expect("client");
        let timeout = Duration::from_secs(5);
        // Partition 0 got 13 records, partition 1 got 12.
        let (high, pos) = measure(&client, "lagged", 0, Some(NextOffset(4)), true, timeout).unwrap();
        assert_eq!((high, pos, lag(high, pos)), (13, 4, 9));
        let (high, pos) = measure(&client, "lagged", 1, None, true, timeout).unwrap();
        assert_eq!((high, pos, lag(high, pos)), (12, 0, 12));
        let (high, pos) = measure(&client, "lagged", 1, Some(NextOffset(12)), true, timeout).unwrap();
        assert_eq!(lag(high, pos), 0);
    }
}
