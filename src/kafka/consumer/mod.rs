//! The consumer loop: one OS thread that owns the Kafka consumer.
//!
//! It never stops polling. Backpressure is expressed by *pausing*
//! partitions, so the member keeps serving rebalance callbacks and stays in
//! the group; a loop that blocked while the database is slow would be kicked
//! out after `max.poll.interval.ms` and trigger a rebalance storm.
//!
//! Rebalances are incremental (cooperative, the default: a rebalance
//! revokes only the partitions that move, and assigns only the ones added)
//! or eager (every rebalance revokes everything and assigns afresh). Either
//! way, on revoke the writers flush what they hold of the revoked
//! partitions (bounded by `kafka.revoke_timeout`) and the rest of them is
//! forgotten; on assign each added partition starts from the offset stored
//! in Postgres, not Kafka's committed offset. Partitions kept across a
//! cooperative rebalance keep their state: nobody else held them meanwhile.
//!
//! A stored offset outside the log the broker holds (retention deleted the
//! records, or the topic was re-created) is never moved silently:
//! librdkafka runs with `auto.offset.reset=error`, and `RangeWatch` finds
//! the partition and applies `kafka.on_offset_out_of_range`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::OnOffsetOutOfRange;
use crate::format::{Decoded, Decoder, FormatError};
use crate::kafka::message::{dead_letter_of, raw_of, record_meta};
use crate::kafka::offsets::start_position;
use crate::model::dead_letter::DeadLetter;
use crate::model::offsets::NextOffset;
use crate::model::record::Raw;
use crate::model::{TopicId, Topics, Tp};
use crate::pipeline::buffer::Entry;
use crate::pipeline::ports::{AssignError, AssignRequest, ConsumerCommand, WriterCommand};
use crate::pipeline::{Admission, Counters, Offer, Pipeline, Settings, Target};
use crate::row::statements::WriteSql;
use crate::row::{key_hashes_of_fields, DecodeError, HeaderRef, RecentKeys, RecordRef};
use group::Membership;
pub use group::{GroupView, RebalanceEvent};
use out_of_range::{is_out_of_range, RangeWatch};

mod group;
mod out_of_range;

/// State shared by the loop, the rebalance callback and the runtime.
pub struct Shared {
    pub pipelines: Vec<Arc<Pipeline>>,
    pub topics: Arc<Topics>,
    /// Plans new topics' tables and reads and moves stored offsets: the
    /// database side of an assignment, served by the application.
    pub assigner: mpsc::UnboundedSender<AssignRequest>,
    pub reset_earliest: bool,
    /// What a partition positioned outside its log does.
    pub on_out_of_range: OnOffsetOutOfRange,
    pub writers: Vec<mpsc::UnboundedSender<WriterCommand>>,
    pub runtime: tokio::runtime::Handle,
    /// How long a revoke waits for the writers to flush before forgetting
    /// (`kafka.revoke_timeout`).
    pub revoke_timeout: Duration,
    /// Flush spans are exported: read each record's producer trace context.
    pub trace_links: bool,
    /// Shutdown began: no intake, no flush on revoke.
    pub draining: AtomicBool,
    /// Leave the group and end the loop.
    pub stop: AtomicBool,
    /// Partitions currently assigned to this member.
    pub assigned: AtomicUsize,
    /// The member's view of its group (`/status`, metrics).
    group: std::sync::Mutex<GroupView>,
    /// Set by a rebalance: partitions added to a paused pipeline are paused.
    reapply_pauses: AtomicBool,
    /// Why sluice must stop (a new topic's table can't be written).
    fatal: std::sync::Mutex<Option<String>>,
    /// Value schemas (pipeline index, schema id) with fields a pipeline
    /// taking its columns from the schema has no column for: sluice drains
    /// and plans again with them ([`Shared::replan_wanted`]).
    replan: std::sync::Mutex<Vec<(usize, u32)>>,
    replan_wanted: tokio::sync::Notify,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pipelines: Vec<Arc<Pipeline>>,
        topics: Arc<Topics>,
        assigner: mpsc::UnboundedSender<AssignRequest>,
        reset_earliest: bool,
        on_out_of_range: OnOffsetOutOfRange,
        writers: Vec<mpsc::UnboundedSender<WriterCommand>>,
        runtime: tokio::runtime::Handle,
        revoke_timeout: Duration,
        trace_links: bool,
    ) -> Self {
        Self {
            pipelines,
            topics,
            assigner,
            reset_earliest,
            on_out_of_range,
            writers,
            runtime,
            revoke_timeout,
            trace_links,
            draining: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            assigned: AtomicUsize::new(0),
            group: std::sync::Mutex::new(GroupView {
                generation: -1,
                protocol: "none",
                ..GroupView::default()
            }),
            reapply_pauses: AtomicBool::new(false),
            fatal: std::sync::Mutex::new(None),
            replan: std::sync::Mutex::new(Vec::new()),
            replan_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Asks for a re-plan for value schema `id` of pipeline `index`; true
    /// the first time it is asked.
    fn request_replan(&self, index: usize, id: u32) -> bool {
        let mut wanted = self.replan.lock().unwrap_or_else(|e| e.into_inner());
        if wanted.contains(&(index, id)) {
            return false;
        }
        wanted.push((index, id));
        self.replan_wanted.notify_one();
        true
    }

    /// Resolves with the (pipeline index, value schema id) pairs once a
    /// re-plan is wanted.
    pub async fn replan_wanted(&self) -> Vec<(usize, u32)> {
        loop {
            let wanted = self.replan.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !wanted.is_empty() {
                return wanted;
            }
            self.replan_wanted.notified().await;
        }
    }

    /// A copy of the member's view of its group.
    pub fn group(&self) -> GroupView {
        self.group.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a rebalance callback that began at `started` and changed the
    /// assignment by `tpl` (added when assigned, removed otherwise).
    fn rebalanced(&self, membership: Membership, event: RebalanceEvent, tpl: &TopicPartitionList, started: Instant) {
        let mut view = self.group.lock().unwrap_or_else(|e| e.into_inner());
        for elem in tpl.elements() {
            let held = view.assignment.entry(elem.topic().to_owned()).or_default();
            if event == RebalanceEvent::Assigned {
                held.insert(elem.partition());
            } else {
                held.remove(&elem.partition());
            }
        }
        view.assignment.retain(|_, parts| !parts.is_empty());
        view.update(membership);
        let took = started.elapsed();
        view.record(event, tpl.count(), took);
        self.assigned.store(view.assigned(), Ordering::Relaxed);
        info!(
            event = event.as_str(),
            partitions = tpl.count(),
            held = view.assigned(),
            generation = view.generation,
            member_id = %view.member_id,
            protocol = view.protocol,
            took_ms = took.as_millis() as u64,
            "rebalance"
        );
    }

    /// Of the partitions in `tpl`, those whose pipeline is flowing (not
    /// paused, not draining): librdkafka keeps a partition's application
    /// pause across unassign and assign, so one revoked while its pipeline
    /// was paused would come back paused for good unless resumed.
    fn flowing(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let mut out = TopicPartitionList::new();
        if self.draining.load(Ordering::Relaxed) {
            return out;
        }
        for elem in tpl.elements() {
            let Some((_, index)) = self.topics.route(elem.topic()) else {
                continue;
            };
            if !self.pipelines[index].lock().paused {
                out.add_partition(elem.topic(), elem.partition());
            }
        }
        out
    }

    /// Why the consumer loop stopped on its own, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops sluice: the loop ends, leaving the group; nothing of the
    /// topic concerned was buffered, so nothing is lost.
    fn fail(&self, why: String) {
        error!(error = %why, "stopping sluice");
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Sends `request` to the assigner and waits for its answer.
    fn ask<T>(&self, request: impl FnOnce(oneshot::Sender<T>) -> AssignRequest) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.assigner.send(request(reply)).ok()?;
        answer.blocking_recv().ok()
    }

    /// Reads the stored positions of the assigned partitions, records them
    /// as the fencing baseline and writes the start offsets into `tpl`.
    fn on_assign(&self, tpl: &mut TopicPartitionList) {
        let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
        for elem in tpl.elements() {
            by_topic
                .entry(elem.topic().to_owned())
                .or_default()
                .push(elem.partition());
        }
        for (topic, partitions) in by_topic {
            let Some((topic_id, index)) = self.topics.route(&topic) else {
                if self.topics.matches_pattern(&topic) {
                    // Matched, but no topic id was left: its records would
                    // be ignored for ever, so stop instead.
                    self.fail(format!(
                        "topic {topic:?} matches a pattern, but sluice already reads {} topics, its maximum",
                        crate::model::MAX_TOPICS
                    ));
                } else {
                    warn!(%topic, "assigned a topic no pipeline maps; ignoring it");
                }
                // An explicit position: with no committed offset librdkafka
                // would otherwise report it out of range (`auto.offset.reset=error`).
                for &partition in &partitions {
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::End);
                }
                continue;
            };
            let pipeline = &self.pipelines[index];
            // The assigner plans the table of a topic new to a per-topic
            // pipeline (until then its partitions are not registered, so
            // nothing of it is buffered or committed), then reads the
            // stored offsets: starting anywhere else would only get fenced.
            let answer = self.ask(|reply| AssignRequest::Assign {
                pipeline: index,
                topic_id,
                topic: topic.clone(),
                partitions: partitions.clone(),
                reply,
            });
            let stored = match answer.unwrap_or(Err(AssignError::Gone)) {
                Ok(stored) => stored,
                Err(err) => {
                    // Shutting down: the assigner may be gone; nothing of
                    // the topic is held, so nothing is lost.
                    if !self.draining.load(Ordering::Relaxed) {
                        self.fail(err.to_string());
                    }
                    for &partition in &partitions {
                        let _ = tpl.set_partition_offset(&topic, partition, Offset::End);
                    }
                    continue;
                }
            };
            let mut state = pipeline.lock();
            for &partition in &partitions {
                let stored = stored.get(&partition).copied();
                let tp = Tp {
                    topic: topic_id,
                    partition,
                };
                state.assign(tp, stored);
                if let Err(err) =
                    tpl.set_partition_offset(&topic, partition, start_position(stored, self.reset_earliest))
                {
                    error!(%topic, partition, error = %err, "cannot set start offset");
                }
            }
            info!(pipeline = %pipeline.name, %topic, ?partitions, stored = ?stored_list(&stored), "partitions assigned");
        }
        self.reapply_pauses.store(true, Ordering::Relaxed);
    }

    /// Flushes what the writers hold of the revoked partitions (`only`
    /// them when the rebalance is incremental; everything when eager, which
    /// revokes everything; nothing when shutting down, where that was
    /// already done, or when `flush` is false: the assignment was lost),
    /// then forgets the revoked partitions' records: they were not
    /// committed, so the next owner reads them again.
    fn on_revoke(&self, tpl: &TopicPartitionList, incremental: bool, flush: bool) {
        let revoked: HashSet<(usize, Tp)> = tpl
            .elements()
            .iter()
            .filter_map(|elem| {
                let (topic, index) = self.topics.route(elem.topic())?;
                Some((
                    index,
                    Tp {
                        topic,
                        partition: elem.partition(),
                    },
                ))
            })
            .collect();
        if flush && !revoked.is_empty() && !self.draining.load(Ordering::Relaxed) {
            let only = Arc::new(revoked.iter().map(|(_, tp)| *tp).collect::<HashSet<Tp>>());
            let acks: Vec<oneshot::Receiver<()>> = self
                .writers
                .iter()
                .filter_map(|w| {
                    let (ack, rx) = oneshot::channel();
                    let command = if incremental {
                        WriterCommand::FlushPartitions {
                            partitions: only.clone(),
                            ack,
                        }
                    } else {
                        WriterCommand::FlushAll { ack }
                    };
                    w.send(command).ok().map(|_| rx)
                })
                .collect();
            let timeout = self.revoke_timeout;
            let flushed = self.runtime.block_on(async move {
                tokio::time::timeout(timeout, async {
                    for rx in acks {
                        let _ = rx.await;
                    }
                })
                .await
                .is_ok()
            });
            if !flushed {
                warn!(timeout = ?timeout, "revoke: writers did not flush in time; unflushed records will be re-read by the next owner");
            }
        }
        let mut forgotten = 0;
        for (index, tp) in revoked {
            forgotten += self.pipelines[index].lock().revoke(tp);
        }
        info!(
            partitions = tpl.count(),
            forgotten,
            flushed = flush,
            "partitions revoked"
        );
    }
}

fn stored_list(stored: &HashMap<i32, NextOffset>) -> Vec<(i32, i64)> {
    let mut v: Vec<(i32, i64)> = stored.iter().map(|(p, o)| (*p, o.0)).collect();
    v.sort();
    v
}

/// The librdkafka context: the rebalance callback forwards to [`Shared`]
/// and applies its answer; it decides nothing itself.
pub struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    /// librdkafka's errors, logged as rdkafka's default does, except an
    /// offset out of range: the consumer loop finds the partition and logs
    /// it with what it decided (this report names neither).
    fn error(&self, error: KafkaError, reason: &str) {
        if is_out_of_range(&error) {
            debug!(error = %error, %reason, "kafka reported an offset out of range");
        } else {
            error!("librdkafka: {error}: {reason}");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        super::forward_log(level, facility, message);
    }
}

impl ConsumerContext for Context {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let started = Instant::now();
        let membership = Membership::read(consumer);
        let incremental = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let shared = &self.shared;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                shared.on_assign(tpl);
                let assigned = if incremental {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(err) = assigned {
                    // The partitions would stay registered but never be
                    // fetched: stop rather than stall them silently.
                    shared.fail(format!("assigning partitions failed: {err}"));
                }
                // The pauses that pipelines need are re-applied by the loop.
                let flowing = shared.flowing(tpl);
                if flowing.count() > 0 {
                    if let Err(err) = consumer.resume(&flowing) {
                        warn!(error = %err, "resuming assigned partitions failed");
                    }
                }
                shared.rebalanced(membership, RebalanceEvent::Assigned, tpl, started);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Lost (the session timed out): the partitions may be another
                // member's already, so flushing would only race it.
                let lost = consumer.assignment_lost();
                shared.on_revoke(tpl, incremental, !lost);
                let unassigned = if incremental {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(err) = unassigned {
                    error!(error = %err, "unassign failed");
                }
                let event = if lost {
                    RebalanceEvent::Lost
                } else {
                    RebalanceEvent::Revoked
                };
                shared.rebalanced(membership, event, tpl, started);
            }
            other => {
                error!(error = ?other, "rebalance failed; dropping the assignment");
                let held = consumer.assignment().unwrap_or_default();
                shared.on_revoke(&held, incremental, false);
                let _ = if incremental {
                    consumer.incremental_unassign(&held)
                } else {
                    consumer.unassign()
                };
                shared.rebalanced(membership, RebalanceEvent::Lost, &held, started);
            }
        }
    }
}

/// Builds the consumer with sluice's context and subscribes it.
pub fn create(
    properties: &std::collections::BTreeMap<String, String>,
    shared: Arc<Shared>,
) -> KafkaResult<BaseConsumer<Context>> {
    let mut config = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        config.set(k, v);
    }
    config.set_log_level(super::log_level(properties));
    let consumer: BaseConsumer<Context> = config.create_with_context(Context { shared: shared.clone() })?;
    let topics = shared.topics.subscription();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// How long a poll waits for a record when none is queued.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How often paused pipelines are checked for resumption.
const RESUME_LOOK: Duration = Duration::from_millis(20);

/// How long a record whose schema has new fields is held before it is
/// read again (sluice is draining to re-plan meanwhile).
const REPLAN_HOLD: Duration = Duration::from_secs(1);

/// Runs the loop on the calling thread until `shared.stop` is set, then
/// commits what it can and closes the consumer (leaving the group).
pub fn run(consumer: BaseConsumer<Context>, shared: Arc<Shared>, commands: std_mpsc::Receiver<ConsumerCommand>) {
    let mut state = LoopState {
        pending_commits: HashMap::new(),
        pending_seeks: Vec::new(),
        scratch: Vec::with_capacity(4096),
        recent_keys: HashMap::new(),
        key_fields: Vec::new(),
        key_hashes: Vec::new(),
        drained: false,
        range: RangeWatch::default(),
        schema_fields: HashMap::new(),
        last_route: (String::new(), None),
    };
    let mut last_resume_look = Instant::now();
    let mut busy = false;
    while !shared.stop.load(Ordering::Relaxed) {
        state.serve_commands(&consumer, &shared, &commands);
        if shared.draining.load(Ordering::Relaxed) && !state.drained {
            pause_all(&consumer, &shared);
            state.drained = true;
        }
        if shared.reapply_pauses.swap(false, Ordering::Relaxed) {
            reapply_pauses(&consumer, &shared, state.drained);
        }
        // Right after a record, a poll without a timeout: while records are
        // queued (a catch-up) it is answered at once, and librdkafka reads
        // the clock once less per record. Only after an empty answer does
        // the loop wait (each poll is still followed by the checks above).
        let wait = if busy { Duration::ZERO } else { POLL_WAIT };
        let message = consumer.poll(wait);
        if message.is_none() && busy {
            // Nothing more was queued (or the poll served one of librdkafka's
            // own events, e.g. a commit's result; the next record takes the
            // hand-over back): the writers need not wait for more to fill a
            // batch.
            intake_drained(&shared);
        }
        busy = matches!(message, Some(Ok(_)));
        let idle = message.is_none() && !wait.is_zero();
        // One clock read per record: it dates the record's arrival and
        // paces the resume check.
        let now = Instant::now();
        match message {
            None => {}
            Some(Ok(msg)) => state.intake(&consumer, &shared, &msg, now),
            Some(Err(err)) if is_out_of_range(&err) => state.range.pending = Some(err.to_string()),
            Some(Err(err)) => warn!(error = %err, "kafka consumer error"),
        }
        state.watch_range(&consumer, &shared, now);
        if idle || now.duration_since(last_resume_look) >= RESUME_LOOK {
            last_resume_look = now;
            resume_at_low_watermark(&consumer, &shared);
        }
    }
    state.serve_commands(&consumer, &shared, &commands);
    if !state.pending_commits.is_empty() {
        state.commit(&consumer, CommitMode::Sync);
    }
    info!("leaving the consumer group");
    // Dropping the consumer closes it: the final revoke runs through the
    // callback (which, while draining, only forgets) and the member leaves.
    drop(consumer);
}

/// What the consumer makes of a record (see [`LoopState::encode`]); the
/// default is a record with nothing to write (a marker covering its offset).
#[derive(Default)]
struct Encoded {
    row: Option<Box<[u8]>>,
    dead_letter: Option<DeadLetter>,
    raw: Option<Box<Raw>>,
    /// The record cannot be decoded yet (its schema is unavailable): hold
    /// the pipeline until then, and re-read the record.
    hold: Option<(Instant, String)>,
    /// The record's value schema (id) has fields the pipeline, which takes
    /// its columns from the schema, has no column for: re-plan, and hold
    /// the record meanwhile.
    replan: Option<(u32, String)>,
}

struct LoopState {
    pending_commits: HashMap<(usize, Tp), i64>,
    pending_seeks: Vec<(usize, Tp, u64, Option<NextOffset>)>,
    scratch: Vec<u8>,
    /// Per pipeline: the unique keys of its recent rows.
    recent_keys: HashMap<usize, RecentKeys>,
    /// Scratch for hashing a row's unique keys.
    key_fields: Vec<(usize, usize)>,
    key_hashes: Vec<u64>,
    drained: bool,
    range: RangeWatch,
    /// For pipelines taking their columns from the schema: per (pipeline,
    /// value schema id), the fields of that schema without a column, when
    /// there are any (`None`: every field has one).
    schema_fields: HashMap<(usize, u32), Option<String>>,
    /// The last topic routed (see [`LoopState::route`]).
    last_route: (String, Option<(TopicId, usize)>),
}

impl LoopState {
    fn serve_commands(
        &mut self,
        consumer: &BaseConsumer<Context>,
        shared: &Shared,
        commands: &std_mpsc::Receiver<ConsumerCommand>,
    ) {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                ConsumerCommand::Commit {
                    pipeline,
                    tp,
                    epoch,
                    next,
                } => {
                    let held = shared.pipelines[pipeline].lock().holds(tp, epoch);
                    if held {
                        self.pending_commits.insert((pipeline, tp), next.0);
                    }
                }
                ConsumerCommand::Seek {
                    pipeline,
                    tp,
                    epoch,
                    to,
                } => self.pending_seeks.push((pipeline, tp, epoch, to)),
            }
        }
        if !self.pending_commits.is_empty() {
            self.commit(consumer, CommitMode::Async);
        }
        let seeks = std::mem::take(&mut self.pending_seeks);
        for (index, tp, epoch, to) in seeks {
            let pipeline = &shared.pipelines[index];
            if !pipeline.lock().holds(tp, epoch) {
                continue;
            }
            let topic = shared.topics.name(tp.topic);
            let offset = start_position(to, shared.reset_earliest);
            // librdkafka's seek discards what was fetched before it, so from
            // here on everything polled for the partition starts at `to`.
            match consumer.seek(topic, tp.partition, offset, Duration::from_secs(5)) {
                Ok(()) => {
                    pipeline.lock().seeked(tp, epoch);
                    debug!(%topic, partition = tp.partition, ?offset, "seeked to re-read");
                }
                Err(err) => {
                    warn!(%topic, partition = tp.partition, error = %err, "seek failed; retrying");
                    self.pending_seeks.push((index, tp, epoch, to));
                }
            }
        }
    }

    fn commit(&mut self, consumer: &BaseConsumer<Context>, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for ((_, tp), next) in self.pending_commits.drain() {
            let topic = consumer.context().shared.topics.name(tp.topic);
            let _ = tpl.add_partition_offset(topic, tp.partition, Offset::Offset(next));
        }
        if let Err(err) = consumer.commit(&tpl, mode) {
            debug!(error = %err, "kafka offset commit failed (lag reporting only)");
        }
    }

    /// Whether the row just encoded into `scratch` (its fields noted in
    /// `key_fields`) repeats the unique key of a recent row of its table
    /// (insert mode only: an upsert merges repeats).
    fn repeats_recent_key(&mut self, pipeline: usize, target: &Arc<Target>, batch_size: usize) -> bool {
        let keys = target.encoder.unique_keys();
        if keys.is_empty() || !matches!(target.write_sql, WriteSql::Insert { .. }) {
            return false;
        }
        let table = Arc::as_ptr(target) as usize;
        key_hashes_of_fields(table, keys, &self.scratch, &self.key_fields, &mut self.key_hashes);
        self.recent_keys
            .entry(pipeline)
            .or_insert_with(|| RecentKeys::new(batch_size))
            .seen(&self.key_hashes)
    }

    /// A record's row, or its dead letter when it cannot become one, and
    /// its raw record when the row repeats a recent row's unique key; or a
    /// hold when its schema cannot be had now.
    #[allow(clippy::too_many_arguments)]
    fn encode(
        &mut self,
        index: usize,
        target: &Arc<Target>,
        (decoder, from_schema): (&Decoder, bool),
        msg: &BorrowedMessage<'_>,
        topic: &str,
        timestamp_ms: Option<i64>,
        s: &Settings,
        now: Instant,
    ) -> Encoded {
        // `None`: the record is larger than `max_record_bytes`.
        let dead = |err: Option<&DecodeError>| Encoded {
            dead_letter: Some(dead_letter_of(msg, err, s.max_record_bytes)),
            ..Encoded::default()
        };
        if msg.payload().is_some_and(|v| v.len() > s.max_record_bytes) {
            return dead(None);
        }
        // Formats with a schema, and envelopes, decode first; schemaless
        // JSON goes to the encoder as it is.
        let decoded = match decoder.is_plain() {
            true => Decoded {
                key: msg.key().map(Cow::Borrowed),
                value: msg.payload().map(Cow::Borrowed),
                ..Decoded::default()
            },
            false => match decoder.decode(msg.key(), msg.payload(), target.encoder.reads_key(), now) {
                Ok(decoded) => decoded,
                Err(FormatError::Record(why)) => return dead(Some(&DecodeError::for_record(why))),
                Err(FormatError::Unavailable { until, why }) => {
                    return Encoded {
                        hold: Some((until, why)),
                        ..Encoded::default()
                    }
                }
            },
        };
        if let Some(id) = decoded.value_schema.filter(|_| from_schema) {
            if let Some(why) = self.fields_without_columns(index, id, decoder, target) {
                return Encoded {
                    replan: Some((id, why)),
                    ..Encoded::default()
                };
            }
        }
        if decoded.skip {
            // Nothing to write (the tombstone after a Debezium delete): a
            // marker that only covers its offset.
            return Encoded::default();
        }
        // Only read when a column needs them: librdkafka parses a record's
        // headers with an allocation even when it has none.
        let headers: Vec<HeaderRef<'_>> = match target.encoder.reads_headers().then(|| msg.headers()).flatten() {
            Some(h) => h.iter().map(|h| (h.key, h.value)).collect(),
            None => Vec::new(),
        };
        let record = RecordRef {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms,
            key: decoded.key.as_deref(),
            value: decoded.value.as_deref(),
            source: decoded.source.as_deref(),
            headers: &headers,
        };
        self.scratch.clear();
        // A record that can't become a row keeps its raw bytes as a dead
        // letter, stored with its batch; its offset advances in order.
        let (row, dead_letter) =
            match target
                .encoder
                .encode_noting_fields(&record, &mut self.scratch, &mut self.key_fields)
            {
                Ok(()) => (Some(Box::<[u8]>::from(self.scratch.as_slice())), None),
                Err(err) => (None, Some(dead_letter_of(msg, Some(&err), s.max_record_bytes))),
            };
        // A row repeating a recent row's unique key keeps its raw record:
        // it will most likely be refused, and then needs it for its dead letter.
        let raw =
            (row.is_some() && self.repeats_recent_key(index, target, s.batch_size)).then(|| Box::new(raw_of(msg)));
        Encoded {
            row,
            dead_letter,
            raw,
            hold: None,
            replan: None,
        }
    }

    /// For a pipeline whose columns come from the schema: the fields of the
    /// value schema `id` that have no column (named, for the log), or `None`
    /// when every one has. Worked out once per schema id.
    fn fields_without_columns(&mut self, index: usize, id: u32, decoder: &Decoder, target: &Target) -> Option<String> {
        self.schema_fields
            .entry((index, id))
            .or_insert_with(|| {
                // Every schema a record was just decoded with is cached. A
                // schema that gives no columns asks for a re-plan too, which
                // then stops sluice with the reason: never written past.
                let fields = match decoder.value_columns(id)? {
                    Ok(fields) => fields,
                    Err(why) => return Some(format!("value schema id {id} gives no columns: {why}")),
                };
                let columns = target.encoder.columns();
                let missing: Vec<&str> = fields
                    .iter()
                    .map(|f| f.name.as_str())
                    .filter(|name| !columns.iter().any(|c| c.name == *name))
                    .collect();
                (!missing.is_empty()).then(|| {
                    format!(
                        "value schema id {id} has field(s) without a column: {}",
                        missing.join(", ")
                    )
                })
            })
            .clone()
    }

    /// The topic id and pipeline of a record's topic; records of one topic
    /// come in runs, so the last answer is kept and the shared map (a lock
    /// and a hash of the name) is only asked when the topic changes.
    fn route(&mut self, shared: &Shared, name: &str) -> Option<(TopicId, usize)> {
        let (last, cached) = &mut self.last_route;
        if let Some(found) = cached.filter(|_| last.as_str() == name) {
            return Some(found);
        }
        let found = shared.topics.route(name)?;
        // The name's buffer is reused: records of several topics may alternate.
        last.clear();
        last.push_str(name);
        *cached = Some(found);
        Some(found)
    }

    /// Decodes a record and hands it to its pipeline's buffer.
    fn intake(&mut self, consumer: &BaseConsumer<Context>, shared: &Shared, msg: &BorrowedMessage<'_>, now: Instant) {
        if self.drained {
            // Shutting down: not buffered, not committed, re-read by the next owner.
            return;
        }
        let topic_name = msg.topic();
        let Some((topic, index)) = self.route(shared, topic_name) else {
            return;
        };
        let pipeline = &shared.pipelines[index];
        let tp = Tp {
            topic,
            partition: msg.partition(),
        };
        let offset = msg.offset();
        let meta = record_meta(msg, shared.trace_links);
        let s = &pipeline.settings;
        let encoded = pipeline.with_target(topic, |target| {
            self.encode(
                index,
                target,
                (&pipeline.decoder, pipeline.columns_from_schema),
                msg,
                topic_name,
                meta.timestamp_ms,
                s,
                now,
            )
        });
        let Some(Encoded {
            row,
            dead_letter,
            raw,
            hold,
            replan,
        }) = encoded
        else {
            // Its table could not be planned (sluice is stopping): the
            // partition was never registered, so skipping loses nothing.
            return;
        };
        if let Some((until, why)) = hold {
            self.hold(consumer, shared, index, tp, offset, (until, &why), "schema unavailable");
            return;
        }
        if let Some((id, why)) = replan {
            // Not written without its new fields: held (and re-read) while
            // sluice drains, re-plans the table from the schema and starts again.
            if shared.request_replan(index, id) {
                warn!(pipeline = %pipeline.name, topic = %topic_name, partition = tp.partition, offset, error = %why,
                    "the schema has new fields: draining to re-plan the table from it");
            }
            let until = now + REPLAN_HOLD;
            self.hold(
                consumer,
                shared,
                index,
                tp,
                offset,
                (until, &why),
                "waiting for the re-plan",
            );
            return;
        }
        if let Some(d) = &dead_letter {
            debug!(pipeline = %pipeline.name, topic = %topic_name, partition = tp.partition, offset,
                error = %d.error, "record cannot become a row: dead letter");
        }
        let mut entry = Entry::new(tp, 0, offset, row, meta);
        entry.dead_letter = dead_letter.map(Box::new);
        entry.raw = raw;
        // No entry may cost more than half the buffer: it could never be
        // admitted under `block`, and `drop_oldest` would evict everything for it.
        entry.fit(s.limits.max_bytes / 2, |why| {
            dead_letter_of(msg, Some(&DecodeError::for_record(why)), s.max_record_bytes)
        });
        let (wake, pause, offer) = {
            let mut state = pipeline.lock();
            let state = &mut *state;
            let offer = state.offer(entry, s, now);
            match offer {
                Offer::Ignored => return,
                Offer::Refused { epoch, seek_to } => {
                    // BLOCKED: the record is neither buffered nor covered. Have
                    // librdkafka fetch the partition again from it; until then
                    // everything still arriving for it is ignored.
                    self.pending_seeks.push((index, tp, epoch, Some(seek_to)));
                    info!(pipeline = %pipeline.name, topic = %topic_name, partition = tp.partition, offset,
                        "buffer full: record refused, the partition will be re-read from it");
                }
                Offer::Taken(_) => {}
            }
            pipeline.refresh_state(state);
            let wake = state.lanes_to_wake(tp, offer, s);
            let pause = state.should_pause(s);
            (
                wake,
                pause.then(|| partition_list(shared, state.partitions.keys())),
                offer,
            )
        };
        match offer {
            Offer::Taken(Admission::Buffered { evicted }) => Counters::add(&pipeline.counters.dropped, evicted),
            Offer::Taken(Admission::Dropped { rows }) => Counters::add(&pipeline.counters.dropped, rows),
            // Not taken, but the pause it may have decided still applies.
            Offer::Taken(Admission::Refused) | Offer::Refused { .. } | Offer::Ignored => {}
        }
        if matches!(offer, Offer::Taken(_)) {
            Counters::add(&pipeline.counters.consumed, 1);
        }
        for lane in wake {
            pipeline.wake_writer(lane);
        }
        if let Some(tpl) = pause {
            match consumer.pause(&tpl) {
                Ok(()) => {
                    info!(pipeline = %pipeline.name, partitions = tpl.count(), "buffer above high watermark: partitions paused")
                }
                Err(err) => warn!(pipeline = %pipeline.name, error = %err, "pause failed"),
            }
        }
    }

    /// A record whose schema cannot be had before `until`: the core holds
    /// the pipeline (paused until then) and the partition is re-read from
    /// the record. Nothing is dead-lettered for it.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        consumer: &BaseConsumer<Context>,
        shared: &Shared,
        index: usize,
        tp: Tp,
        offset: i64,
        (until, why): (Instant, &str),
        what: &str,
    ) {
        let pipeline = &shared.pipelines[index];
        let pause = {
            let mut state = pipeline.lock();
            if let Offer::Refused { epoch, seek_to } = state.hold(tp, offset, until) {
                self.pending_seeks.push((index, tp, epoch, Some(seek_to)));
                warn!(pipeline = %pipeline.name, topic = %shared.topics.name(tp.topic), partition = tp.partition, offset,
                    retry_in_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, error = %why,
                    "{what}: the pipeline's partitions pause, the record will be read again");
            }
            state
                .should_pause(&pipeline.settings)
                .then(|| partition_list(shared, state.partitions.keys()))
        };
        if let Some(tpl) = pause {
            if let Err(err) = consumer.pause(&tpl) {
                warn!(pipeline = %pipeline.name, error = %err, "pause failed");
            }
        }
    }
}

fn partition_list<'a>(shared: &Shared, tps: impl Iterator<Item = &'a Tp>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tp in tps {
        tpl.add_partition(shared.topics.name(tp.topic), tp.partition);
    }
    tpl
}

/// The consumer found nothing more to read: the lanes holding records are
/// handed over, and their writers woken (see `FlushPolicy::due`).
fn intake_drained(shared: &Shared) {
    for pipeline in &shared.pipelines {
        let lanes = pipeline.lock().buffer.intake_drained();
        for lane in lanes {
            pipeline.wake_writer(lane);
        }
    }
}

fn resume_at_low_watermark(consumer: &BaseConsumer<Context>, shared: &Shared) {
    for pipeline in &shared.pipelines {
        let (tpl, positions) = {
            let mut state = pipeline.lock();
            let Some(positions) = state.resume(&pipeline.settings, Instant::now()) else {
                continue;
            };
            let mut seek = TopicPartitionList::new();
            for (tp, NextOffset(next)) in positions {
                let _ = seek.add_partition_offset(shared.topics.name(tp.topic), tp.partition, Offset::Offset(next));
            }
            (partition_list(shared, state.partitions.keys()), seek)
        };
        match consumer.resume(&tpl) {
            Ok(()) => {
                info!(pipeline = %pipeline.name, partitions = tpl.count(), "partitions resumed")
            }
            Err(err) => warn!(pipeline = %pipeline.name, error = %err, "resume failed"),
        }
        // librdkafka's resume does not wake the broker thread, which idles
        // up to a second once all its partitions are paused (measured: 0.2 –
        // 0.65 s without a record after each resume, while the buffer ran
        // dry). A seek to where the partition is anyway restarts its
        // fetcher, and that wakes the thread. What pause purged is refetched
        // either way.
        if positions.count() > 0 {
            if let Err(err) = consumer.seek_partitions(positions, Duration::from_secs(1)) {
                debug!(pipeline = %pipeline.name, error = %err, "seek after resume failed; fetching resumes on librdkafka's own schedule");
            }
        }
    }
}

fn reapply_pauses(consumer: &BaseConsumer<Context>, shared: &Shared, drained: bool) {
    for pipeline in &shared.pipelines {
        let tpl = {
            let state = pipeline.lock();
            if !(state.paused || drained) || state.partitions.is_empty() {
                continue;
            }
            partition_list(shared, state.partitions.keys())
        };
        if let Err(err) = consumer.pause(&tpl) {
            warn!(pipeline = %pipeline.name, error = %err, "re-applying pause failed");
        }
    }
}

fn pause_all(consumer: &BaseConsumer<Context>, shared: &Shared) {
    if let Ok(assignment) = consumer.assignment() {
        if assignment.count() > 0 {
            let _ = consumer.pause(&assignment);
        }
    }
    info!(
        partitions = shared.assigned.load(Ordering::Relaxed),
        "draining: intake stopped"
    );
}
