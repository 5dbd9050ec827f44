//! This member's view of its consumer group — member id, generation,
//! protocol, assignment, rebalance counts and durations — kept by the
//! rebalance callback for `/status` and the metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_void;
use std::time::{Duration, SystemTime};

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};

/// What a rebalance callback did to this member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// Partitions assigned (eager: the whole new assignment; cooperative:
    /// the ones added, possibly none).
    Assigned,
    /// Partitions revoked (eager: all of them; cooperative: the ones that move).
    Revoked,
    /// The assignment was lost (the session timed out, or a rebalance
    /// failed): the partitions may already be someone else's.
    Lost,
}

impl RebalanceEvent {
    pub const ALL: [RebalanceEvent; 3] = [Self::Assigned, Self::Revoked, Self::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Revoked => "revoked",
            Self::Lost => "lost",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One rebalance callback, as `/status` shows the last one.
#[derive(Debug, Clone, Copy)]
pub struct LastRebalance {
    pub event: RebalanceEvent,
    pub partitions: usize,
    pub at: SystemTime,
    /// Time spent in the callback: reading stored offsets (assign) or
    /// flushing the revoked partitions (revoke); the member's intake waits.
    pub took: Duration,
}

/// The member's group state (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// Empty until the member first joined.
    pub member_id: String,
    /// The group generation this member's assignment belongs to (-1 until joined).
    pub generation: i32,
    /// `"cooperative"`, `"eager"`, or `"none"` before the first join.
    pub protocol: &'static str,
    /// Topic → partitions held now.
    pub assignment: BTreeMap<String, BTreeSet<i32>>,
    /// Callbacks per [`RebalanceEvent`], in [`RebalanceEvent::ALL`] order.
    pub counts: [u64; 3],
    /// Seconds spent in callbacks per [`RebalanceEvent`].
    pub seconds: [f64; 3],
    pub last: Option<LastRebalance>,
}

impl GroupView {
    /// Records a callback that `took`.
    pub fn record(&mut self, event: RebalanceEvent, partitions: usize, took: Duration) {
        self.counts[event.index()] += 1;
        self.seconds[event.index()] += took.as_secs_f64();
        self.last = Some(LastRebalance {
            event,
            partitions,
            at: SystemTime::now(),
            took,
        });
    }

    pub fn count(&self, event: RebalanceEvent) -> u64 {
        self.counts[event.index()]
    }

    pub fn seconds(&self, event: RebalanceEvent) -> f64 {
        self.seconds[event.index()]
    }

    /// How many partitions are held.
    pub fn assigned(&self) -> usize {
        self.assignment.values().map(BTreeSet::len).sum()
    }

    /// Takes the member id, generation and protocol read by [`Membership::read`].
    pub fn update(&mut self, membership: Membership) {
        if let Some((generation, member_id)) = membership.ids {
            self.generation = generation;
            self.member_id = member_id;
        }
        self.protocol = membership.protocol;
    }
}

/// The member id, generation and protocol librdkafka holds.
#[derive(Debug, Clone)]
pub struct Membership {
    ids: Option<(i32, String)>,
    protocol: &'static str,
}

impl Membership {
    /// Reads them (librdkafka answers from its group thread). Called at the
    /// start of the rebalance callback, before it assigns or unassigns:
    /// while librdkafka waits for that call, the generation and member id
    /// are the ones the change belongs to.
    pub fn read<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Membership {
        Membership {
            ids: membership(consumer),
            protocol: match consumer.rebalance_protocol() {
                RebalanceProtocol::Cooperative => "cooperative",
                RebalanceProtocol::Eager => "eager",
                RebalanceProtocol::None => "none",
            },
        }
    }
}

/// The generation and member id of the consumer's group membership, read
/// from librdkafka's group metadata (the C API has no getter for the
/// generation; its serialized form, used to hand it to a transactional
/// producer, carries it).
fn membership<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<(i32, String)> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live consumer's handle. The metadata returned is
    // owned here and destroyed below; the buffer `write` allocates is read
    // into an owned Vec and then freed with librdkafka's allocator, as its
    // documentation asks.
    unsafe {
        let md = rdsys::rd_kafka_consumer_group_metadata(rk);
        if md.is_null() {
            return None;
        }
        let mut buffer: *mut c_void = std::ptr::null_mut();
        let mut size = 0usize;
        let error = rdsys::rd_kafka_consumer_group_metadata_write(md, &mut buffer, &mut size);
        rdsys::rd_kafka_consumer_group_metadata_destroy(md);
        if !error.is_null() {
            rdsys::rd_kafka_error_destroy(error);
            return None;
        }
        let bytes = std::slice::from_raw_parts(buffer as *const u8, size).to_vec();
        rdsys::rd_kafka_mem_free(rk, buffer);
        parse_group_metadata(&bytes)
    }
}

/// librdkafka's serialized group metadata (`rd_kafka_consumer_group_metadata_write`):
/// the magic `CGMDv2:`, the generation (i32, native byte order), then the
/// group id and the member id, each NUL-terminated, then the instance id.
fn parse_group_metadata(bytes: &[u8]) -> Option<(i32, String)> {
    let rest = bytes.strip_prefix(b"CGMDv2:")?;
    let generation = i32::from_ne_bytes(rest.get(..4)?.try_into().ok()?);
    let rest = &rest[4..];
    let group_end = rest.iter().position(|b| *b == 0)?;
    let rest = &rest[group_end + 1..];
    let member_end = rest.iter().position(|b| *b == 0)?;
    let member_id = String::from_utf8_lossy(&rest[..member_end]).into_owned();
    Some((generation, member_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// librdkafka's own serializer, read back: the generation and member
    /// id come out as they went in (with and without an instance id).
    #[test]
    fn group_metadata_reads_what_librdkafka_writes() {
        for instance in [None, Some("pod-7")] {
            let group = CString::new("the-group").unwrap();
            let member = CString::new("rdkafka-1234-abcd").unwrap();
            let instance = instance.map(|i| CString::new(i).unwrap());
            // SAFETY: valid C strings outlive the calls; what librdkafka
            // allocates is freed with its own functions.
            let bytes = unsafe {
                let md = rdsys::rd_kafka_consumer_group_metadata_new_with_genid(
                    group.as_ptr(),
                    4711,
                    member.as_ptr(),
                    instance.as_ref().map_or(std::ptr::null(), |i| i.as_ptr()),
                );
                let mut buffer: *mut c_void = std::ptr::null_mut();
                let mut size = 0usize;
                let error = rdsys::rd_kafka_consumer_group_metadata_write(md, &mut buffer, &mut size);
                assert!(error.is_null());
                rdsys::rd_kafka_consumer_group_metadata_destroy(md);
                let bytes = std::slice::from_raw_parts(buffer as *const u8, size).to_vec();
                rdsys::rd_kafka_mem_free(std::ptr::null_mut(), buffer);
                bytes
            };
            assert_eq!(
                parse_group_metadata(&bytes),
                Some((4711, "rdkafka-1234-abcd".to_owned()))
            );
        }
        assert_eq!(parse_group_metadata(b"CGMDv1:...."), None);
        assert_eq!(parse_group_metadata(b"CGMDv2:\x01\x00"), None);
    }

    #[test]
    fn the_view_counts_each_event_and_its_time() {
        let mut view = GroupView::default();
        view.record(RebalanceEvent::Assigned, 6, Duration::from_millis(30));
        view.record(RebalanceEvent::Revoked, 2, Duration::from_millis(200));
        view.record(RebalanceEvent::Assigned, 0, Duration::from_millis(10));
        assert_eq!(view.count(RebalanceEvent::Assigned), 2);
        assert_eq!(view.count(RebalanceEvent::Revoked), 1);
        assert_eq!(view.count(RebalanceEvent::Lost), 0);
        assert!((view.seconds(RebalanceEvent::Assigned) - 0.04).abs() < 1e-9);
        let last = view.last.unwrap();
        assert_eq!((last.event, last.partitions), (RebalanceEvent::Assigned, 0));
    }
}
