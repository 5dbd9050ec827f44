//! The per-record hot path on the consumer thread, without Kafka or
//! Postgres: one sample order event (`examples/produce.rs`'s shape, the
//! one `bench/run.sh` uses) decoded and encoded as a COPY line, under
//! the bench's own mapping; and the duplicate-key hashing of that line.
//!
//! `cargo bench --bench encode`; figures in `bench/RESULTS.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::mapping::{ColumnSource, PgType};
use sluice::row::{key_hashes, ColumnPlan, RecordRef, RowEncoder, UniqueKey};

const ORDER: &str = r#"{"amount":"1234.56","customer":{"name":"customer-42"},"id":1042,"items":[{"qty":2,"sku":"SKU-0042","unit_price":"199.99"},{"qty":5,"sku":"SKU-0777","unit_price":"166.91"}],"ts":"2026-11-30T08:31:39.191Z"}"#;

fn col(name: &str, source: &str, ty: PgType) -> ColumnPlan {
    ColumnPlan::new(name, ColumnSource::parse(source).expect("a valid source"), ty)
}

/// The mapping of `bench/common.sh`'s orders table.
fn orders() -> RowEncoder {
    RowEncoder::new(vec![
        col("order_id", "/id", PgType::Int8),
        col("customer", "/customer/name", PgType::Text),
        col("amount", "/amount", PgType::Numeric),
        col("created_at", "/ts", PgType::Timestamptz),
        col("doc", "/", PgType::Jsonb),
        col("kafka_offset", "@offset", PgType::Int8),
        col("kafka_ts", "@timestamp", PgType::Timestamptz),
    ])
    .with_unique_keys(&[("orders_pkey".to_owned(), vec!["order_id".to_owned()])])
}

fn record(value: &[u8]) -> RecordRef<'_> {
    RecordRef {
        topic: "orders",
        partition: 0,
        offset: 1_000_042,
        timestamp_ms: Some(1_796_027_499_191),
        key: None,
        value: Some(value),
        source: None,
        headers: &[],
    }
}

fn encode(c: &mut Criterion) {
    let encoder = orders();
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(ORDER.len() as u64));
    // Only pointer columns into the value, no whole-document column: the
    // projection parse alone.
    let narrow = RowEncoder::new(vec![
        col("order_id", "/id", PgType::Int8),
        col("customer", "/customer/name", PgType::Text),
        col("amount", "/amount", PgType::Numeric),
        col("created_at", "/ts", PgType::Timestamptz),
    ]);
    let mut out = Vec::with_capacity(4096);
    for (name, encoder) in [("order_event", &encoder), ("order_event_pointers_only", &narrow)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                encoder
                    .encode(black_box(&record(ORDER.as_bytes())), &mut out)
                    .expect("encodes");
                black_box(&out);
            })
        });
    }
    group.finish();

    let mut line = Vec::new();
    encoder.encode(&record(ORDER.as_bytes()), &mut line).expect("encodes");
    let keys = [UniqueKey {
        name: "orders_pkey".to_owned(),
        columns: vec![0],
    }];
    let (mut fields, mut hashes) = (Vec::new(), Vec::new());
    c.bench_function("key_hashes/order_line", |b| {
        b.iter(|| {
            key_hashes(1, &keys, black_box(&line), &mut fields, &mut hashes);
            black_box(&hashes);
        })
    });
}

criterion_group!(benches, encode);
criterion_main!(benches);
