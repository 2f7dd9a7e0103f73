//! modelreg's models and versions in MLflow's JSON: snake_case fields,
//! `version` as a string, times in epoch milliseconds, stages as MLflow
//! names them, tags as `{key, value}` lists.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::domain::{Model, Stage, Version};

use super::Refusal;

/// MLflow's name of a stage.
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::None => "None",
        Stage::Staging => "Staging",
        Stage::Production => "Production",
        Stage::Archived => "Archived",
    }
}

/// The stage MLflow's client names (case does not matter, as in MLflow).
pub fn parse_stage(key: &str, raw: &str) -> Result<Stage, Refusal> {
    Stage::ALL
        .into_iter()
        .find(|s| stage_name(*s).eq_ignore_ascii_case(raw.trim()))
        .ok_or_else(|| {
            Refusal::invalid(format!(
                "parameter '{key}' must be one of None, Staging, Production, Archived; got {:?}",
                crate::domain::truncate(raw, 64)
            ))
        })
}

/// Microseconds since the epoch → MLflow's milliseconds.
fn millis(micros: i64) -> i64 {
    micros.div_euclid(1000)
}

fn tag_list(tags: &BTreeMap<String, String>) -> Value {
    tags.iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect()
}

/// A `ModelVersion`. Registration is synchronous here, so every version a
/// read can see has finished registering: its status is READY.
pub fn version(v: &Version) -> Value {
    json!({
        "name": v.model,
        "version": v.version.to_string(),
        "creation_timestamp": millis(v.create_time),
        "last_updated_timestamp": millis(v.update_time),
        "user_id": v.created_by,
        "current_stage": stage_name(v.stage),
        "description": v.description,
        "source": v.artifact_uri,
        "run_id": v.source.run_id,
        "run_link": v.source.pipeline_url,
        "status": "READY",
        "tags": tag_list(&v.tags),
        "aliases": v.aliases,
    })
}

/// A `RegisteredModel`, with `latest` as its `latest_versions` (the newest
/// version of each stage).
pub fn model(m: &Model, latest: &[Version]) -> Value {
    let aliases: Vec<Value> = m
        .aliases
        .iter()
        .map(|(alias, v)| json!({"alias": alias, "version": v.to_string()}))
        .collect();
    json!({
        "name": m.name,
        "creation_timestamp": millis(m.create_time),
        "last_updated_timestamp": millis(m.update_time),
        "user_id": m.created_by,
        "description": m.description,
        "latest_versions": latest.iter().map(version).collect::<Vec<_>>(),
        "tags": tag_list(&m.tags),
        "aliases": aliases,
    })
}
