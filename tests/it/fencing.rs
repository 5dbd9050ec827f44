//! Fencing: a writer whose stored offset moved under it (a zombie after a
//! rebalance) rolls back its whole transaction and re-reads.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::kafka::consumer::ConsumerCommand;
use sluice::kafka::offsets::NextOffset;
use sluice::kafka::{Topics, Tp};
use sluice::mapping::{ColumnSource, PgType};
use sluice::pipeline::buffer::{Entry, Limits};
use sluice::pipeline::{next_epoch, PartState, Pipeline, Settings};
use sluice::sink::breaker::BreakerSettings;
use sluice::sink::encode::{ColumnPlan, RecordRef, RowEncoder};
use sluice::sink::schema::TableRef;
use sluice::sink::writer::{Control, Writer};

use crate::harness::*;

fn push(pipeline: &Pipeline, tp: Tp, topic: &str, offsets: std::ops::Range<i64>) {
    let mut state = pipeline.lock();
    let epoch = state.partitions[&tp].epoch;
    for offset in offsets {
        let value = format!(r#"{{"id":{offset}}}"#);
        let record = RecordRef {
            topic,
            partition: tp.partition,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(value.as_bytes()),
            headers: &[],
        };
        let mut row = Vec::new();
        pipeline
            .target(tp.topic)
            .unwrap()
            .encoder
            .encode(&record, &mut row)
            .unwrap();
        state.buffer.push(
            Entry {
                tp,
                epoch,
                offset,
                row: Some(row.into_boxed_slice()),
                timestamp_ms: None,
                trace: None,
                dead_letter: None,
                raw: None,
            },
            Instant::now(),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_flush_rolls_back_and_nothing_is_duplicated() {
    let services = Services::from_env();
    let pool = services.pool().await;
    sluice::service::migrate(&pool).await.unwrap();
    let (topic, group, table) = (unique("fence"), unique("g"), unique("fenced"));
    sqlx::query(&format!("CREATE TABLE {table} (id bigint, kafka_offset bigint)"))
        .execute(&pool)
        .await
        .unwrap();

    let columns = vec![
        ColumnPlan::new("id", ColumnSource::Pointer("/id".into()), PgType::Int8),
        ColumnPlan::new("kafka_offset", ColumnSource::Offset, PgType::Int8),
    ];
    let settings = Settings {
        batch_size: 1000,
        batch_bytes: 1 << 20,
        flush_interval: Duration::from_millis(100),
        limits: Limits {
            max_records: 10_000,
            max_bytes: 1 << 24,
        },
        high_watermark: 0.8,
        low_watermark: 0.5,
        strategy: sluice::config::Strategy::Block,
        sample_rate: 10,
        flush: sluice::sink::flush_policy::FlushSettings {
            target_latency: Duration::from_secs(1),
            min_interval: Duration::from_millis(20),
            max_interval: Duration::from_secs(5),
            max_batch_rows: 1000,
            min_batch_rows: 100,
        },
        max_record_bytes: 1 << 20,
        tolerance: sluice::config::Tolerance::All,
        dlq_topic: None,
    };
    let target = TableRef {
        schema: "public".into(),
        name: table.clone(),
    };
    let pipeline = Arc::new(Pipeline::new("p".into(), target, RowEncoder::new(columns), settings));
    let topics = Topics::default();
    let tp = Tp {
        topic: topics.insert(&topic, 0).unwrap(),
        partition: 0,
    };
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let (_writer_tx, writer_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writer = Writer {
        index: 0,
        pipeline: pipeline.clone(),
        pool: pool.clone(),
        group_id: Arc::from(group.as_str()),
        topics: Arc::new(topics),
        commands: writer_rx,
        consumer: cmd_tx,
        control: Control::new(
            &pipeline,
            BreakerSettings {
                failure_threshold: 3,
                open_duration: Duration::from_secs(1),
                max_open_duration: Duration::from_secs(5),
            },
            Duration::from_secs(30),
        ),
        refetch: Arc::new(std::sync::Mutex::new(sluice::kafka::refetch::Refetcher::new(
            Default::default(),
        ))),
        dlq: None,
    };

    // This instance was assigned partition 0 at stored offset 0 and read 0..10.
    sqlx::query("INSERT INTO sluice.offsets (group_id, topic, partition, next_offset) VALUES ($1, $2, 0, 0)")
        .bind(&group)
        .bind(&topic)
        .execute(&pool)
        .await
        .unwrap();
    let first_epoch = next_epoch();
    pipeline.lock().partitions.insert(
        tp,
        PartState {
            epoch: first_epoch,
            stored: Some(NextOffset(0)),
            expected: Some(NextOffset(10)),
            awaiting_seek: false,
        },
    );
    push(&pipeline, tp, &topic, 0..10);

    // Meanwhile the partition moved to another owner, which wrote 0..5.
    sqlx::query(&format!("INSERT INTO {table} SELECT g, g FROM generate_series(0, 4) g"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE sluice.offsets SET next_offset = 5 WHERE group_id = $1 AND topic = $2")
        .bind(&group)
        .bind(&topic)
        .execute(&pool)
        .await
        .unwrap();

    writer.flush_pending().await;

    assert_eq!(count(&pool, &table).await, 5, "the fenced transaction wrote nothing");
    assert_eq!(
        stored_offsets(&pool, &group, &topic).await,
        vec![(0, 5)],
        "stored offset untouched"
    );
    assert_eq!(pipeline.counters.fenced.load(std::sync::atomic::Ordering::Relaxed), 1);
    let (epoch, seek_to) = match cmd_rx.try_recv().expect("a seek was requested") {
        ConsumerCommand::Seek {
            tp: seek_tp, epoch, to, ..
        } => {
            assert_eq!(seek_tp, tp);
            (epoch, to)
        }
        other => panic!("expected a seek, got {other:?}"),
    };
    assert_eq!(
        seek_to,
        Some(NextOffset(5)),
        "re-reads from where the other owner stopped"
    );
    {
        let state = pipeline.lock();
        let part = &state.partitions[&tp];
        assert!(part.awaiting_seek && part.epoch == epoch && part.epoch != first_epoch);
        assert_eq!(part.stored, Some(NextOffset(5)));
        assert_eq!(state.buffer.records(), 0, "the stale records are forgotten");
    }

    // After the seek the consumer redelivers 5..10; they land once.
    {
        let mut state = pipeline.lock();
        state.partitions.get_mut(&tp).unwrap().awaiting_seek = false;
    }
    push(&pipeline, tp, &topic, 5..10);
    writer.flush_pending().await;
    let (n, distinct): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(DISTINCT kafka_offset) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((n, distinct), (10, 10), "offsets 0..10 exactly once");
    assert_eq!(stored_offsets(&pool, &group, &topic).await, vec![(0, 10)]);
    assert!(matches!(
        cmd_rx.try_recv(),
        Ok(ConsumerCommand::Commit {
            next: NextOffset(10),
            ..
        })
    ));
}
