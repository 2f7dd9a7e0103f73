//! The paged reads (AIP-158): each parses its query and page token (every
//! bad field at once), reads one page through [`crate::app`] and converts
//! it, with the token of the next page bound to the same query.

use modelreg_api::v1 as pb;

use crate::app;
use crate::domain::{self, EventFilter, Name, Violations};
use crate::error::{Error, Result};
use crate::grpc::convert::{self, evaluation_set_to_pb, evaluation_to_pb, event_to_pb};
use crate::grpc::convert::{model_to_pb, request_to_pb, version_to_pb};
use crate::grpc::page_token::{self, Pager};
use crate::grpc::parse::{optional_name, parse_stage_field, required_set_ref};
use crate::store::{ModelFilter, Store};

/// The most terms a ListModels filter may have: each term is one more
/// condition in the query, and the database refuses a deep enough tree.
pub const MAX_FILTER_TERMS: usize = 32;

/// The longest ListModels filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;

/// ListModels: models matching the filter, by name.
pub(super) async fn models(
    store: &Store,
    r: pb::ListModelsRequest,
) -> Result<pb::ListModelsResponse> {
    let pager = Pager::new("models", &r.filter);
    let (size, filter, after) = domain::all((
        domain::parse_page_size("page_size", r.page_size),
        parse_model_filter(&r.filter),
        pager.after(&r.page_token),
    ))?;
    let (models, more) = app::list_models(store, &filter, after.as_deref(), size).await?;
    let (models, next_page_token) = pager.page(models, more, model_to_pb);
    Ok(pb::ListModelsResponse {
        models,
        next_page_token,
    })
}

/// ListVersions: one model's versions, optionally in one stage, by number.
pub(super) async fn versions(
    store: &Store,
    r: pb::ListVersionsRequest,
) -> Result<pb::ListVersionsResponse> {
    let stage = match r.stage {
        0 => Ok(None),
        raw => parse_stage_field("stage", raw).map(Some),
    };
    let pager = Pager::new("versions", format!("{}|{}", r.model, r.stage));
    let (model, size, stage, after) = domain::all((
        Name::parse("model", &r.model),
        domain::parse_page_size("page_size", r.page_size),
        stage,
        pager.after(&r.page_token),
    ))?;
    let after = after.and_then(|k| k.parse::<i64>().ok()).unwrap_or(0);
    let (versions, more) = app::list_versions(store, model.as_str(), stage, after, size).await?;
    let (versions, next_page_token) = pager.page(versions, more, version_to_pb);
    Ok(pb::ListVersionsResponse {
        versions,
        next_page_token,
    })
}

/// ListTransitionRequests: the requests inbox, optionally of one model and
/// in one status, oldest first.
pub(super) async fn requests(
    store: &Store,
    r: pb::ListTransitionRequestsRequest,
) -> Result<pb::ListTransitionRequestsResponse> {
    let pager = Pager::new("requests", format!("{}\u{1e}{}", r.model, r.status));
    let (model, status, size, after) = domain::all((
        optional_name("model", &r.model),
        convert::request_status_from_pb("status", r.status),
        domain::parse_page_size("page_size", r.page_size),
        pager.after_key(&r.page_token, page_token::request_cursor),
    ))?;
    let model = model.as_ref().map(Name::as_str);
    let (requests, more) = app::list_requests(store, model, status, after, size).await?;
    let (requests, next_page_token) = pager.page(requests, more, request_to_pb);
    Ok(pb::ListTransitionRequestsResponse {
        requests,
        next_page_token,
    })
}

/// ListEvaluationSets: every set, or the versions of one, by name and version.
pub(super) async fn evaluation_sets(
    store: &Store,
    r: pb::ListEvaluationSetsRequest,
) -> Result<pb::ListEvaluationSetsResponse> {
    let pager = Pager::new("evaluation_sets", &r.name);
    let (name, size, after) = domain::all((
        optional_name("name", &r.name),
        domain::parse_page_size("page_size", r.page_size),
        pager.after_key(&r.page_token, page_token::set_ref),
    ))?;
    let name = name.as_ref().map(Name::as_str);
    let (sets, more) = app::list_evaluation_sets(store, name, after.as_ref(), size).await?;
    let (evaluation_sets, next_page_token) = pager.page(sets, more, evaluation_set_to_pb);
    Ok(pb::ListEvaluationSetsResponse {
        evaluation_sets,
        next_page_token,
    })
}

/// ListEvaluations: one model's evaluations on one set, optionally only
/// those that measured `metric`.
pub(super) async fn evaluations(
    store: &Store,
    r: pb::ListEvaluationsRequest,
) -> Result<pb::ListEvaluationsResponse> {
    let query = format!("{}|{:?}|{}", r.model, r.evaluation_set, r.metric);
    let pager = Pager::new("evaluations", query);
    let (model, set, size, after) = domain::all((
        Name::parse("model", &r.model),
        required_set_ref("evaluation_set", r.evaluation_set.as_ref()),
        domain::parse_page_size("page_size", r.page_size),
        pager.after_key(&r.page_token, page_token::evaluation_key),
    ))?;
    let metric = (!r.metric.is_empty()).then_some(r.metric.as_str());
    let (evaluations, more) =
        app::list_evaluations(store, model.as_str(), &set, metric, after, size).await?;
    let (evaluations, next_page_token) = pager.page(evaluations, more, evaluation_to_pb);
    Ok(pb::ListEvaluationsResponse {
        evaluations,
        next_page_token,
    })
}

/// ListEvents: the event log, filtered, in sequence order.
pub(super) async fn events(
    store: &Store,
    r: pb::ListEventsRequest,
) -> Result<pb::ListEventsResponse> {
    let mut v = Violations::default();
    let size = v.take(domain::parse_page_size("page_size", r.page_size));
    let mut filter = EventFilter::default();
    if !r.model.is_empty()
        && let Some(m) = v.take(Name::parse("model", &r.model))
    {
        filter.models = vec![m.to_string()];
    }
    if r.version < 0 {
        v.add("version", "must not be negative");
    } else if r.version > 0 && r.model.is_empty() {
        v.add("version", "filtering by version needs a model");
    }
    filter.version = r.version.max(0);
    if !r.actor.is_empty() {
        filter.actor = Some(r.actor.clone());
    }
    filter.kinds = convert::event_kinds_from_pb("types", &r.types, &mut v);
    filter.start_time = r
        .start_time
        .as_ref()
        .and_then(|t| v.take(convert::micros_from_pb("start_time", t)));
    filter.end_time = r
        .end_time
        .as_ref()
        .and_then(|t| v.take(convert::micros_from_pb("end_time", t)));
    let query = format!(
        "{}|{}|{}|{:?}|{}|{:?}|{:?}",
        r.model, r.version, r.actor, r.types, r.after_sequence, r.start_time, r.end_time
    );
    let pager = Pager::new("events", query);
    let after = v
        .take(pager.after(&r.page_token))
        .map(|k| k.and_then(|k| k.parse::<u64>().ok()));
    v.finish()?;
    let after = after.expect("checked").unwrap_or(0).max(r.after_sequence);
    let size = size.expect("checked");
    let (events, more) = app::list_events(store, &filter, after, None, size).await?;
    let (events, next_page_token) = pager.page(events, more, event_to_pb);
    Ok(pb::ListEventsResponse {
        events,
        next_page_token,
    })
}

/// Parses the ListModels filter grammar (terms joined by ` AND `).
fn parse_model_filter(raw: &str) -> Result<ModelFilter, Error> {
    let mut filter = ModelFilter::default();
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(filter);
    }
    if raw.len() > MAX_FILTER_BYTES {
        return Err(Error::invalid(
            "filter",
            format!(
                "is {} bytes; at most {MAX_FILTER_BYTES} are allowed",
                raw.len()
            ),
        ));
    }
    let terms = raw.split(" AND ").count();
    if terms > MAX_FILTER_TERMS {
        return Err(Error::invalid(
            "filter",
            format!("has {terms} terms; at most {MAX_FILTER_TERMS} are allowed"),
        ));
    }
    let bad = |term: &str| {
        Error::invalid(
            "filter",
            format!(
                "cannot parse {:?}: use terms like tags.KEY=VALUE, tags.KEY:*, name=NAME or name:PREFIX*, joined by AND",
                domain::truncate(term, 80)
            ),
        )
    };
    for term in raw.split(" AND ") {
        let term = term.trim();
        let unquote = |v: &str| v.trim().trim_matches('"').to_owned();
        if let Some(rest) = term.strip_prefix("tags.") {
            if let Some(key) = rest.strip_suffix(":*") {
                if key.is_empty() {
                    return Err(bad(term));
                }
                filter.tag_present.push(key.to_owned());
            } else if let Some((key, value)) = rest.split_once('=') {
                if key.is_empty() {
                    return Err(bad(term));
                }
                filter.tag_equals.push((key.to_owned(), unquote(value)));
            } else {
                return Err(bad(term));
            }
        } else if let Some(name) = term.strip_prefix("name=") {
            filter.name_equals = Some(unquote(name));
        } else if let Some(prefix) = term.strip_prefix("name:") {
            let prefix = unquote(prefix);
            let Some(prefix) = prefix.strip_suffix('*') else {
                return Err(bad(term));
            };
            filter.name_prefix = Some(prefix.to_owned());
        } else {
            return Err(bad(term));
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_every_documented_term() {
        let f = parse_model_filter("tags.team=fraud AND tags.tier:* AND name:fr*").unwrap();
        assert_eq!(f.tag_equals, vec![("team".into(), "fraud".into())]);
        assert_eq!(f.tag_present, vec!["tier".to_string()]);
        assert_eq!(f.name_prefix.as_deref(), Some("fr"));
        assert!(parse_model_filter("owner = me").is_err());
        assert!(parse_model_filter("name:fr").is_err());
    }
}
