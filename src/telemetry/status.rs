//! What `/readyz` and `/status` report, from the live pipelines.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::health::DbHealth;
use super::lag::LagTable;
use super::{FlushLog, FlushOutcome};
use crate::config::Config;
use crate::kafka::consumer::Shared;
use crate::kafka::Topics;
use crate::pipeline::{breaker_state, Counters, Pipeline};

/// Everything telemetry reads: the pipelines and the consumer's shared
/// state (read under their locks, briefly), and what the lag poller, the
/// database probe and flush events record.
pub struct Observed {
    pub pipelines: Vec<Arc<Pipeline>>,
    pub topics: Arc<Topics>,
    pub shared: Arc<Shared>,
    pub lag: Arc<LagTable>,
    pub db: Arc<DbHealth>,
    pub last_flush: Arc<FlushLog>,
    /// For `/status`; no secrets.
    pub group_id: String,
    pub brokers: String,
    pub postgres: String,
    pub started: SystemTime,
}

impl Observed {
    pub fn new(config: &Config, pipelines: Vec<Arc<Pipeline>>, topics: Arc<Topics>, shared: Arc<Shared>) -> Observed {
        Observed {
            pipelines,
            topics,
            shared,
            lag: Arc::new(LagTable::default()),
            db: Arc::new(DbHealth::default()),
            last_flush: Arc::new(FlushLog::default()),
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
            if p.breaker_state.load(Ordering::Relaxed) == breaker_state::OPEN {
                reasons.push(format!("pipeline {}: circuit breaker open", p.name));
            }
            if p.stopped.load(Ordering::Relaxed) {
                reasons.push(format!("pipeline {}: stopped", p.name));
            }
        }
        reasons
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let reasons = self.unready_reasons();
        let lag = self.lag.snapshot();
        let last_flush = self.last_flush.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
                    "breaker": breaker_state::name(p.breaker_state.load(Ordering::Relaxed)),
                    "stopped": p.stopped.load(Ordering::Relaxed),
                    "flush_interval_ms": p.flush_interval().as_secs_f64() * 1000.0,
                    "lag": lags,
                    "lag_total": total_lag,
                    "last_flush": last_flush.get(&p.name).map(|f| json!({
                        "at": rfc3339(f.at),
                        "outcome": f.outcome.as_str(),
                        "error": match f.outcome {
                            FlushOutcome::Failed(class) => Value::from(super::class_name(class)),
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
            },
            "postgres": {
                "url": self.postgres,
                "reachable": self.db.is_ok(),
                "last_error": self.db.last_error(),
            },
            "pipelines": pipelines,
        })
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
