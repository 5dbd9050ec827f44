//! What `/readyz`, `/status` and the observable metrics report, read from
//! the live pipelines and the consumer's shared state.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use opentelemetry::metrics::{Meter, ObservableCounter, ObservableGauge};
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use crate::config::Config;
use crate::format::Schemas;
use crate::kafka::consumer::{GroupView, RebalanceEvent, Shared};
use crate::model::Topics;
use crate::pipeline::breaker::BreakerPhase;
use crate::pipeline::{Counters, Pipeline};
use crate::postgres::health::DbHealth;
use crate::telemetry::lag::LagTable;
use crate::telemetry::metrics::*;
use crate::telemetry::{FlushOutcome, Flushes};

/// Everything telemetry reads: the pipelines and the consumer's shared
/// state (read under their locks, briefly), and what the lag poller, the
/// database probe and flush events record.
pub struct Observed {
    pub pipelines: Vec<Arc<Pipeline>>,
    pub topics: Arc<Topics>,
    pub shared: Arc<Shared>,
    pub lag: Arc<LagTable>,
    pub db: Arc<DbHealth>,
    pub flushes: Flushes,
    /// For `/status`; no secrets.
    pub group_id: String,
    pub brokers: String,
    pub postgres: String,
    pub started: SystemTime,
}

impl Observed {
    pub fn new(
        config: &Config,
        pipelines: Vec<Arc<Pipeline>>,
        topics: Arc<Topics>,
        shared: Arc<Shared>,
        flushes: Flushes,
    ) -> Observed {
        Observed {
            pipelines,
            topics,
            shared,
            lag: Arc::new(LagTable::default()),
            db: Arc::new(DbHealth::default()),
            flushes,
            group_id: config.kafka.group_id.clone(),
            brokers: config.kafka.brokers.clone(),
            postgres: config.postgres.redacted_url(),
            started: SystemTime::now(),
        }
    }

    /// Why sluice is not ready; empty when it is. Ready means: partitions
    /// assigned, Postgres answering, no breaker open, no pipeline stopped,
    /// not shutting down.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shared.draining.load(Ordering::Relaxed) {
            reasons.push("shutting down".to_owned());
        }
        if self.shared.assigned.load(Ordering::Relaxed) == 0 {
            reasons.push("no partitions assigned".to_owned());
        }
        if !self.db.is_ok() {
            let error = self.db.last_error().unwrap_or_default();
            reasons.push(format!("postgres unreachable: {error}"));
        }
        for p in &self.pipelines {
            if p.breaker.get() == BreakerPhase::Open {
                reasons.push(format!("pipeline {}: circuit breaker open", p.name));
            }
            if p.stopped.load(Ordering::Relaxed) {
                reasons.push(format!("pipeline {}: stopped", p.name));
            }
        }
        if let Some(view) = self.schemas().map(|s| s.view(Instant::now())).filter(|v| !v.available) {
            let error = view.last_error.unwrap_or_default();
            reasons.push(format!("schema registry unavailable: {error}"));
        }
        reasons
    }

    /// The schema cache in front of the registry (one, shared by every
    /// pipeline), when a pipeline reads a format that needs it.
    fn schemas(&self) -> Option<&Arc<Schemas>> {
        self.pipelines.iter().find_map(|p| p.decoder.schemas())
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let reasons = self.unready_reasons();
        let lag = self.lag.snapshot();
        let last_flush = self.flushes.last();
        let pipelines: Vec<Value> = self
            .pipelines
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let (state, utilization, records, bytes, paused, mut partitions) = {
                    let s = p.lock();
                    let mut parts: Vec<(String, i32)> = s
                        .partitions
                        .keys()
                        .map(|tp| (self.topics.name(tp.topic).to_owned(), tp.partition))
                        .collect();
                    parts.sort();
                    (
                        s.bp.as_str(),
                        s.buffer.utilization(),
                        s.buffer.records(),
                        s.buffer.bytes(),
                        s.paused || s.draining,
                        parts,
                    )
                };
                let limits = p.settings.limits;
                let as_json = |parts: &[(String, i32)]| -> Vec<Value> {
                    parts
                        .iter()
                        .map(|(t, part)| json!({"topic": t, "partition": part}))
                        .collect()
                };
                let assigned = as_json(&partitions);
                if !paused {
                    partitions.clear();
                }
                let lags: Vec<Value> = lag
                    .iter()
                    .filter(|l| l.pipeline == index)
                    .map(|l| {
                        json!({
                            "topic": self.topics.name(l.tp.topic),
                            "partition": l.tp.partition,
                            "lag": l.lag,
                            "high_watermark": l.high,
                            "position": l.position,
                        })
                    })
                    .collect();
                let total_lag: i64 = lag.iter().filter(|l| l.pipeline == index).map(|l| l.lag).sum();
                let c = &p.counters;
                json!({
                    "name": p.name,
                    "table": p.table.to_string(),
                    "state": state,
                    "strategy": p.settings.strategy.as_str(),
                    "utilization": utilization,
                    "buffer": {
                        "records": records,
                        "bytes": bytes,
                        "max_records": limits.max_records,
                        "max_bytes": limits.max_bytes,
                    },
                    "assigned_partitions": assigned,
                    "paused_partitions": as_json(&partitions),
                    "breaker": p.breaker.get().as_str(),
                    "stopped": p.stopped.load(Ordering::Relaxed),
                    "flush_interval_ms": p.flush_interval().as_secs_f64() * 1000.0,
                    "lag": lags,
                    "lag_total": total_lag,
                    "last_flush": last_flush.get(&p.name).map(|f| json!({
                        "at": rfc3339(f.at),
                        "outcome": f.outcome.as_str(),
                        "error": match f.outcome {
                            FlushOutcome::Failed(class) => Value::from(class.as_str()),
                            FlushOutcome::Committed => Value::Null,
                        },
                        "rows": f.rows,
                        "bytes": f.bytes,
                        "partitions": f.partitions,
                        "duration_ms": f.duration.as_secs_f64() * 1000.0,
                    })),
                    "counters": {
                        "consumed": Counters::get(&c.consumed),
                        "written": Counters::get(&c.written),
                        "dropped": Counters::get(&c.dropped),
                        "dead_lettered": Counters::get(&c.dead_lettered),
                        "flushes": Counters::get(&c.flushes),
                        "fenced": Counters::get(&c.fenced),
                        "gaps": Counters::get(&c.gaps),
                    },
                })
            })
            .collect();
        json!({
            "service": "sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "started": rfc3339(self.started),
            "ready": reasons.is_empty(),
            "unready_reasons": reasons,
            "draining": self.shared.draining.load(Ordering::Relaxed),
            "kafka": {
                "brokers": self.brokers,
                "group_id": self.group_id,
                "assigned_partitions": self.shared.assigned.load(Ordering::Relaxed),
                "group": group_json(&self.shared.group()),
            },
            "postgres": {
                "url": self.postgres,
                "reachable": self.db.is_ok(),
                "last_error": self.db.last_error(),
            },
            "schema_registry": self.schemas().map(|s| {
                let view = s.view(Instant::now());
                json!({
                    "available": view.available,
                    "retry_in_ms": view.retry_in.map(|d| d.as_millis() as u64),
                    "last_error": view.last_error,
                    "cached_schemas": view.cached,
                    "requests": {
                        "fetched": s.stats.fetched.load(Ordering::Relaxed),
                        "not_found": s.stats.not_found.load(Ordering::Relaxed),
                        "unavailable": s.stats.unavailable.load(Ordering::Relaxed),
                    },
                })
            }),
            "pipelines": pipelines,
        })
    }
}

/// The observable instruments' handles: they report while held.
#[derive(Default)]
pub struct Instruments {
    _counters: Vec<ObservableCounter<u64>>,
    _group_counters: Vec<ObservableCounter<f64>>,
    _generation: Option<ObservableGauge<i64>>,
    _gauges_u64: Vec<ObservableGauge<u64>>,
    _gauges_f64: Vec<ObservableGauge<f64>>,
}

/// Reports one value with its labels.
type Observe<'a, T> = &'a mut dyn FnMut(T, &[KeyValue]);
/// Reads a pipeline's counter.
type ReadCounter = fn(&Counters, &Labels, Observe<'_, u64>);
/// Reads a gauge of pipeline `index`.
type ReadGauge<T> = fn(&Observed, usize, &Labels, Observe<'_, T>);

/// Per-pipeline label sets, built once.
struct Labels {
    pipeline: Vec<KeyValue>,
    written: Vec<KeyValue>,
    strategy: Vec<KeyValue>,
}

/// Registers every observable instrument of [`CATALOGUE`].
pub fn register(meter: &Meter, observed: Arc<Observed>) -> Instruments {
    let labels: Arc<Vec<Labels>> = Arc::new(
        observed
            .pipelines
            .iter()
            .map(|p| {
                let name = KeyValue::new("pipeline", p.name.clone());
                let reason = |r: &'static str| vec![name.clone(), KeyValue::new("reason", r)];
                Labels {
                    pipeline: vec![name.clone()],
                    written: vec![name.clone(), KeyValue::new("table", p.table.to_string())],
                    // Always present, so dashboards and alerts find the series;
                    // under `block` it stays 0.
                    strategy: reason(p.settings.strategy.as_str()),
                }
            })
            .collect(),
    );

    // A counter that reads one of each pipeline's `Counters`.
    let counter = |info: MetricInfo, read: ReadCounter| {
        let (observed, labels) = (observed.clone(), labels.clone());
        meter
            .u64_observable_counter(info.name)
            .with_description(info.help)
            .with_unit(info.unit)
            .with_callback(move |o| {
                for (p, l) in observed.pipelines.iter().zip(labels.iter()) {
                    read(&p.counters, l, &mut |v, attrs| o.observe(v, attrs));
                }
            })
            .build()
    };
    let mut counters = vec![
        counter(CONSUMED, |c, l, o| o(Counters::get(&c.consumed), &l.pipeline)),
        counter(WRITTEN, |c, l, o| o(Counters::get(&c.written), &l.written)),
        counter(DROPPED, |c, l, o| {
            o(Counters::get(&c.dropped), &l.strategy);
        }),
        counter(DEAD_LETTERED, |c, l, o| o(Counters::get(&c.dead_lettered), &l.pipeline)),
        counter(DLQ_PRODUCE_FAILURES, |c, l, o| {
            o(Counters::get(&c.dlq_produce_failures), &l.pipeline)
        }),
        counter(FENCED, |c, l, o| o(Counters::get(&c.fenced), &l.pipeline)),
        counter(GAPS, |c, l, o| o(Counters::get(&c.gaps), &l.pipeline)),
        counter(OUT_OF_RANGE, |c, l, o| o(Counters::get(&c.out_of_range), &l.pipeline)),
    ];

    // Gauges read each pipeline's state under its lock, once per collection.
    let gauge_f64 = |info: MetricInfo, read: ReadGauge<f64>| {
        let (observed, labels) = (observed.clone(), labels.clone());
        meter
            .f64_observable_gauge(info.name)
            .with_description(info.help)
            .with_unit(info.unit)
            .with_callback(move |o| {
                for (i, l) in labels.iter().enumerate() {
                    read(&observed, i, l, &mut |v, attrs| o.observe(v, attrs));
                }
            })
            .build()
    };
    let gauge_u64 = |info: MetricInfo, read: ReadGauge<u64>| {
        let (observed, labels) = (observed.clone(), labels.clone());
        meter
            .u64_observable_gauge(info.name)
            .with_description(info.help)
            .with_unit(info.unit)
            .with_callback(move |o| {
                for (i, l) in labels.iter().enumerate() {
                    read(&observed, i, l, &mut |v, attrs| o.observe(v, attrs));
                }
            })
            .build()
    };
    let mut gauges_u64 = vec![
        gauge_u64(BUFFER_RECORDS, |ob, i, l, o| {
            o(ob.pipelines[i].lock().buffer.records() as u64, &l.pipeline)
        }),
        gauge_u64(BUFFER_BYTES, |ob, i, l, o| {
            o(ob.pipelines[i].lock().buffer.bytes() as u64, &l.pipeline)
        }),
        gauge_u64(BACKPRESSURE_STATE, |ob, i, l, o| {
            let state = ob.pipelines[i].lock().bp;
            let mut attrs = l.pipeline.clone();
            attrs.push(KeyValue::new("state", state.as_str()));
            o(state as u64, &attrs)
        }),
        gauge_u64(PAUSED_PARTITIONS, |ob, i, l, o| {
            let s = ob.pipelines[i].lock();
            let paused = if s.paused || s.draining { s.partitions.len() } else { 0 };
            o(paused as u64, &l.pipeline)
        }),
        gauge_u64(ASSIGNED_PARTITIONS, |ob, i, l, o| {
            o(ob.pipelines[i].lock().partitions.len() as u64, &l.pipeline)
        }),
        gauge_u64(BREAKER_STATE, |ob, i, l, o| {
            let state = ob.pipelines[i].breaker.get();
            let mut attrs = l.pipeline.clone();
            attrs.push(KeyValue::new("state", state.as_str()));
            o(state as u64, &attrs)
        }),
    ];
    let gauges_f64 = vec![
        gauge_f64(BUFFER_UTILIZATION, |ob, i, l, o| {
            o(ob.pipelines[i].lock().buffer.utilization(), &l.pipeline)
        }),
        gauge_f64(FLUSH_INTERVAL, |ob, i, l, o| {
            o(ob.pipelines[i].flush_interval().as_secs_f64(), &l.pipeline)
        }),
    ];
    // The member's group: one series per event, whatever the pipelines.
    let group_counter = |info: MetricInfo, read: fn(&GroupView, RebalanceEvent) -> f64| {
        let observed = observed.clone();
        meter
            .f64_observable_counter(info.name)
            .with_description(info.help)
            .with_unit(info.unit)
            .with_callback(move |o| {
                let view = observed.shared.group();
                for event in RebalanceEvent::ALL {
                    o.observe(read(&view, event), &[KeyValue::new("event", event.as_str())]);
                }
            })
            .build()
    };
    let group_counters = vec![
        group_counter(REBALANCES, |v, e| v.count(e) as f64),
        group_counter(REBALANCE_SECONDS, GroupView::seconds),
    ];
    let generation_observed = observed.clone();
    let generation = meter
        .i64_observable_gauge(GROUP_GENERATION.name)
        .with_description(GROUP_GENERATION.help)
        .with_unit(GROUP_GENERATION.unit)
        .with_callback(move |o| o.observe(i64::from(generation_observed.shared.group().generation), &[]))
        .build();
    let lag_observed = observed.clone();
    gauges_u64.push(
        meter
            .u64_observable_gauge(CONSUMER_LAG.name)
            .with_description(CONSUMER_LAG.help)
            .with_unit(CONSUMER_LAG.unit)
            .with_callback(move |o| {
                for l in lag_observed.lag.snapshot() {
                    let Some(pipeline) = lag_observed.pipelines.get(l.pipeline) else {
                        continue;
                    };
                    o.observe(
                        l.lag.max(0) as u64,
                        &[
                            KeyValue::new("pipeline", pipeline.name.clone()),
                            KeyValue::new("topic", lag_observed.topics.name(l.tp.topic).to_owned()),
                            KeyValue::new("partition", i64::from(l.tp.partition)),
                        ],
                    );
                }
            })
            .build(),
    );
    // The schema registry: observed only when a pipeline uses it.
    if observed.schemas().is_some() {
        let schema_observed = observed.clone();
        counters.push(
            meter
                .u64_observable_counter(SCHEMA_REQUESTS.name)
                .with_description(SCHEMA_REQUESTS.help)
                .with_unit(SCHEMA_REQUESTS.unit)
                .with_callback(move |o| {
                    if let Some(s) = schema_observed.schemas() {
                        for (outcome, n) in [
                            ("fetched", &s.stats.fetched),
                            ("not_found", &s.stats.not_found),
                            ("unavailable", &s.stats.unavailable),
                        ] {
                            o.observe(n.load(Ordering::Relaxed), &[KeyValue::new("outcome", outcome)]);
                        }
                    }
                })
                .build(),
        );
        let cached_observed = observed.clone();
        gauges_u64.push(
            meter
                .u64_observable_gauge(SCHEMA_CACHED.name)
                .with_description(SCHEMA_CACHED.help)
                .with_unit(SCHEMA_CACHED.unit)
                .with_callback(move |o| {
                    if let Some(s) = cached_observed.schemas() {
                        o.observe(s.view(Instant::now()).cached as u64, &[]);
                    }
                })
                .build(),
        );
    }
    Instruments {
        _counters: counters,
        _group_counters: group_counters,
        _generation: Some(generation),
        _gauges_u64: gauges_u64,
        _gauges_f64: gauges_f64,
    }
}

/// `/status`'s `kafka.group`: who this member is in the group and what
/// rebalances did to it.
fn group_json(view: &GroupView) -> Value {
    let assignment: Vec<Value> = view
        .assignment
        .iter()
        .map(|(topic, partitions)| json!({"topic": topic, "partitions": partitions}))
        .collect();
    let rebalances: serde_json::Map<String, Value> = RebalanceEvent::ALL
        .iter()
        .map(|e| {
            (
                e.as_str().to_owned(),
                json!({"count": view.count(*e), "seconds": view.seconds(*e)}),
            )
        })
        .collect();
    json!({
        "member_id": view.member_id,
        "generation": view.generation,
        "protocol": view.protocol,
        "assignment": assignment,
        "rebalances": rebalances,
        "last_rebalance": view.last.map(|l| json!({
            "event": l.event.as_str(),
            "partitions": l.partitions,
            "at": rfc3339(l.at),
            "duration_ms": l.took.as_secs_f64() * 1000.0,
        })),
    })
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
