//! Plain data every layer shares: topic and partition ids, offsets and
//! their arithmetic, what is kept of a record, dead letters and the classes
//! of write failure. No I/O, no client
//! library types: the Kafka and Postgres layers convert to and from these.

pub mod dead_letter;
pub mod error_class;
pub mod ids;
pub mod offsets;
pub mod record;

pub use dead_letter::{DeadLetter, DeadLetterClass};
pub use error_class::ErrorClass;
pub use ids::{TopicId, Topics, Tp, TpMap, MAX_TOPICS};
pub use offsets::NextOffset;
pub use record::{Coordinates, Raw, RecordMeta, TraceParent};
