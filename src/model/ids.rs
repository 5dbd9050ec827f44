//! Topic and partition ids: the compact names every layer uses for a
//! topic-partition, and the registry that maps them to topic names.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

/// A topic's index in [`Topics`]; cheap to copy into every buffered entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub u32);

/// A map keyed by partition, hashed with foldhash: the core looks
/// partitions up for every record, where SipHash cost ~2 % of a catch-up's
/// instructions; the keys are sluice's own ids, not anything a producer
/// chooses.
pub type TpMap<V> = std::collections::HashMap<Tp, V, foldhash::fast::FixedState>;

/// A topic-partition in the compact form the hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: TopicId,
    pub partition: i32,
}

/// How many distinct topics one process can consume (topic ids are
/// indexes into a fixed table, so that names can be read without a lock).
pub const MAX_TOPICS: usize = 4096;

/// The topics sluice consumes, each routed to exactly one pipeline, so a
/// partition's offsets have one owner. Topics named in the config are known
/// from the start; a topic matching a pipeline's pattern (`"^regex"`) is
/// registered when it is first assigned. Routing is fixed once registered:
/// a named topic goes to the pipeline naming it (the config allows one),
/// otherwise to the first pipeline, in config order, whose pattern matches.
#[derive(Debug)]
pub struct Topics {
    /// Append-only: slot `i` holds topic id `i`'s name once registered.
    names: Box<[OnceLock<Arc<str>>]>,
    by_name: RwLock<HashMap<Arc<str>, (TopicId, usize)>>,
    /// `(pattern as configured, compiled, pipeline index)`, in config order.
    patterns: Vec<(String, regex::Regex, usize)>,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            names: (0..MAX_TOPICS).map(|_| OnceLock::new()).collect(),
            by_name: RwLock::new(HashMap::new()),
            patterns: Vec::new(),
        }
    }
}

impl Topics {
    /// Adds a subscription pattern (`^regex`, as librdkafka reads it) for
    /// pipeline `pipeline`. The error is the regex's.
    pub fn add_pattern(&mut self, pattern: &str, pipeline: usize) -> Result<(), regex::Error> {
        let compiled = regex::Regex::new(pattern)?;
        self.patterns.push((pattern.to_owned(), compiled, pipeline));
        Ok(())
    }

    /// Registers `name` as fed to pipeline `pipeline`; returns its id, or
    /// `None` when [`MAX_TOPICS`] are registered already.
    pub fn insert(&self, name: &str, pipeline: usize) -> Option<TopicId> {
        let mut by_name = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some((id, _)) = by_name.get(name) {
            return Some(*id);
        }
        let index = by_name.len();
        let slot = self.names.get(index)?;
        let name: Arc<str> = Arc::from(name);
        slot.set(name.clone())
            .expect("slots fill in order under the write lock");
        let id = TopicId(index as u32);
        by_name.insert(name, (id, pipeline));
        Some(id)
    }

    /// The topic id and the index of the pipeline it feeds, registering a
    /// topic that matches a pattern on first sight.
    pub fn route(&self, name: &str) -> Option<(TopicId, usize)> {
        if let Some(found) = self.by_name.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Some(*found);
        }
        let (_, _, pipeline) = self.patterns.iter().find(|(_, re, _)| re.is_match(name))?;
        let id = self.insert(name, *pipeline)?;
        Some((id, *pipeline))
    }

    /// Whether `name` matches a pattern (registered or not).
    pub fn matches_pattern(&self, name: &str) -> bool {
        self.patterns.iter().any(|(_, re, _)| re.is_match(name))
    }

    /// The name of a registered topic.
    pub fn name(&self, id: TopicId) -> &str {
        self.names[id.0 as usize]
            .get()
            .expect("ids are only handed out for registered topics")
    }

    /// Every registered topic's name, in id order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map_while(|slot| slot.get()).map(|n| &**n)
    }

    /// What the consumer subscribes to: the named topics and the patterns.
    pub fn subscription(&self) -> Vec<String> {
        let mut all: Vec<String> = self.names().map(str::to_owned).collect();
        all.extend(self.patterns.iter().map(|(p, _, _)| p.clone()));
        all
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_topics_win_and_patterns_register_on_first_sight() {
        let mut topics = Topics::default();
        topics.add_pattern("^orders\\..*", 1).unwrap();
        topics.add_pattern("^orders", 2).unwrap();
        let a = topics.insert("orders.special", 0).unwrap();
        assert_eq!(topics.route("orders.special"), Some((a, 0)), "named beats pattern");
        let (eu, p) = topics.route("orders.eu").unwrap();
        assert_eq!(p, 1, "the first matching pattern in config order");
        assert_eq!(topics.route("orders.eu"), Some((eu, 1)), "stable once registered");
        assert_eq!(topics.route("ordersx").map(|r| r.1), Some(2));
        assert_eq!(topics.route("payments"), None);
        assert_eq!(topics.name(eu), "orders.eu");
        assert_eq!(
            topics.names().collect::<Vec<_>>(),
            ["orders.special", "orders.eu", "ordersx"]
        );
        assert_eq!(
            topics.subscription(),
            ["orders.special", "orders.eu", "ordersx", "^orders\\..*", "^orders"]
        );
    }
}
