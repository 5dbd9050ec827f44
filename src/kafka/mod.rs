//! The Kafka side: the consumer loop and its rebalance handling, reading
//! records back for dead letters, and the dead-letter topic producer.
//! Never imports [`crate::postgres`]: what it needs of the database comes
//! through the pipeline's ports ([`crate::pipeline::ports`]).

pub mod consumer;
pub mod dead_letter_topic;
pub mod lag;
pub mod message;
pub mod offsets;
pub mod refetch;
