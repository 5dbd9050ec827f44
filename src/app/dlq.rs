//! `sluice dlq replay`: dead letters written again with the pipeline's
//! current mapping (list and show are in [`crate::postgres::dead_letters::replay`]).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::connect;
use super::plan::{plan_pipelines, plan_topic, topics_of, with_schema_columns, PlanError};
use crate::config::Config;
use crate::model::TopicId;
use crate::pipeline::Target;

/// `sluice dlq replay`: replays `filter`'s dead letters of pipeline
/// `name` with its current mapping, checked against the live table.
pub async fn dlq_replay(
    config: &Config,
    name: &str,
    filter: &crate::postgres::dead_letters::replay::Filter,
) -> anyhow::Result<crate::postgres::dead_letters::replay::Report> {
    let index = config
        .pipelines
        .iter()
        .position(|p| p.name == name)
        .with_context(|| format!("no pipeline named {name:?} in the config"))?;
    let pool = connect(&config.postgres)
        .await
        .with_context(|| format!("connecting to postgres {}", config.postgres.redacted_url()))?;
    let mut only = config.clone();
    only.pipelines = vec![config.pipelines[index].clone()];
    let only = with_schema_columns(only, &[])?;
    let topics = topics_of(&only)?;
    let pipeline = match plan_pipelines(&only, &pool, &topics).await {
        Ok(mut p) => p.remove(0),
        Err(PlanError::Mapping(errors)) => bail!("the mapping does not fit the table: {}", PlanError::Mapping(errors)),
        Err(other) => return Err(other.into()),
    };
    // A table per topic: plan those of the topics with dead letters to replay.
    let mut targets: HashMap<String, Arc<Target>> = HashMap::new();
    if pipeline.is_per_topic() {
        let dead_topics: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT topic FROM sluice.dead_letters WHERE pipeline = $1 AND replayed_at IS NULL",
        )
        .bind(name)
        .fetch_all(&pool)
        .await?;
        for topic in dead_topics {
            let Some((topic_id, _)) = topics.route(&topic) else {
                continue;
            };
            match plan_topic(&pool, &only.pipelines[0], index, &pipeline, topic_id, &topic).await {
                Ok(target) => {
                    targets.insert(topic, target);
                }
                Err(PlanError::Mapping(errors)) => bail!(
                    "the mapping does not fit the table of topic {topic:?}: {}",
                    PlanError::Mapping(errors)
                ),
                Err(other) => return Err(other.into()),
            }
        }
    }
    let target = |topic: &str| -> Option<Arc<Target>> {
        match pipeline.is_per_topic() {
            true => targets.get(topic).cloned(),
            false => pipeline.target(TopicId(0)),
        }
    };
    Ok(crate::postgres::dead_letters::replay::replay(&pool, name, &target, &pipeline.decoder, filter).await?)
}
