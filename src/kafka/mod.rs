//! Kafka side: the consumer loop, rebalance handling and offset arithmetic.

pub mod consumer;
pub mod offsets;
pub mod refetch;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// A topic's index in [`Topics`]; cheap to copy into every buffered entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub u32);

/// A topic-partition in the compact form the hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: TopicId,
    pub partition: i32,
}

/// The topics sluice consumes, each owned by exactly one pipeline (checked
/// when the config loads), so a partition's offsets have one owner.
#[derive(Debug, Default)]
pub struct Topics {
    names: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, (TopicId, usize)>,
}

impl Topics {
    /// Registers `name` as fed to pipeline `pipeline`; returns its id.
    pub fn insert(&mut self, name: &str, pipeline: usize) -> TopicId {
        if let Some((id, _)) = self.by_name.get(name) {
            return *id;
        }
        let id = TopicId(self.names.len() as u32);
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.by_name.insert(name, (id, pipeline));
        id
    }

    /// The topic id and the index of the pipeline it feeds.
    pub fn route(&self, name: &str) -> Option<(TopicId, usize)> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, id: TopicId) -> &str {
        &self.names[id.0 as usize]
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    pub fn display(&self, tp: Tp) -> TpDisplay<'_> {
        TpDisplay {
            topic: self.name(tp.topic),
            partition: tp.partition,
        }
    }
}

/// `topic[partition]` for log lines.
pub struct TpDisplay<'a> {
    topic: &'a str,
    partition: i32,
}

impl fmt::Display for TpDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}
