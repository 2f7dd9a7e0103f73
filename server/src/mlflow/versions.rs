//! `model-versions/…`: create, get, search, update, transition-stage, tags
//! and get-download-uri, each through its `app::` use case.

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::app::{self, TransitionOutcome};
use crate::dashboard::encode_component;
use crate::domain::{
    self, Name, NewVersion, Source, Stage, StageChange, TransitionRequest, Version, VersionUpdate,
};
use crate::store::VersionRef;

use super::models::{TAG_RETRIES, is_stale, kept_changing, retagged};
use super::search::{Filter, Order, Sortable, Subject};
use super::{Call, Facade, Refusal, max_results, page, search, shapes};

impl Facade {
    pub(super) async fn create_version(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let (model, artifact_uri, run_id, run_link, tags, description) = domain::all((
            Name::parse("name", &p.required("name")?),
            domain::parse_artifact_uri("source", &p.text("source")?.unwrap_or_default()),
            domain::parse_text("run_id", &p.text("run_id")?.unwrap_or_default()),
            domain::parse_link("run_link", &p.text("run_link")?.unwrap_or_default()),
            domain::parse_tags("tags", &p.tags("tags")?),
            domain::parse_text("description", &p.text("description")?.unwrap_or_default()),
        ))?;
        let new = NewVersion {
            model,
            artifact_uri,
            artifact_digest: String::new(),
            source: Source {
                run_id,
                pipeline_url: run_link,
                ..Source::default()
            },
            training_metrics: Default::default(),
            tags,
            description,
            request_id: None,
            target_stage: Stage::None,
        };
        let registered = app::register_version(&self.store, new, c.caller()?.actor).await?;
        Ok(json!({"model_version": shapes::version(&registered.version)}))
    }

    pub(super) async fn get_version(&self, c: &Call) -> Result<Value, Refusal> {
        let version = self.version_of(c).await?;
        Ok(json!({"model_version": shapes::version(&version)}))
    }

    pub(super) async fn download_uri(&self, c: &Call) -> Result<Value, Refusal> {
        let version = self.version_of(c).await?;
        Ok(json!({"artifact_uri": version.artifact_uri}))
    }

    pub(super) async fn search_versions(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let raw_filter = p.text("filter")?.unwrap_or_default();
        let filter = Filter::parse(&raw_filter, true)?;
        let order_by = p.texts("order_by")?;
        let default = [
            "last_updated_timestamp DESC",
            "name ASC",
            "version_number DESC",
        ];
        let order = Order::parse(&order_by, &default, true)?;
        let max = max_results(p, 10_000, 200_000)?;
        let query = format!("versions\n{raw_filter}\n{}", order_by.join("\n"));
        let offset = search::decode_token(p.text("page_token")?.as_deref(), &query)?;
        let models = match filter.exact_name() {
            Some(name) => vec![name.to_owned()],
            None => self.model_names().await?,
        };
        let mut versions = Vec::new();
        for model in models {
            let all = match self.every_version(&model).await {
                Ok(all) => all,
                // A filter naming no model finds nothing, as in MLflow.
                Err(r) if r.code == "RESOURCE_DOES_NOT_EXIST" => continue,
                Err(r) => return Err(r),
            };
            versions.extend(all.into_iter().filter(|v| {
                filter.admits(&Subject {
                    name: &v.model,
                    run_id: Some(&v.source.run_id),
                    tags: &v.tags,
                })
            }));
        }
        versions.sort_by(|a, b| order.compare(&sortable(a), &sortable(b)));
        let (versions, next) = page(versions, offset, max, &query);
        let out: Vec<Value> = versions.iter().map(shapes::version).collect();
        Ok(json!({"model_versions": out, "next_page_token": next}))
    }

    pub(super) async fn update_version(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let (model, version) = (
            Name::parse("name", &p.required("name")?)?,
            p.version("version")?,
        );
        let description = p
            .text("description")?
            .map(|d| domain::parse_text("description", &d))
            .transpose()?;
        let updated = match description {
            None => {
                let which = VersionRef::Number(version);
                app::get_version(&self.store, model.as_str(), &which).await?
            }
            Some(d) => {
                let update = VersionUpdate {
                    model,
                    version,
                    description: Some(d),
                    tags: None,
                    etag: None,
                };
                app::update_version(&self.store, update, c.caller()?.actor).await?
            }
        };
        Ok(json!({"model_version": shapes::version(&updated)}))
    }

    /// `set-tag` (`set`) or `delete-tag` of a version, written only if the
    /// version is still as read.
    pub(super) async fn set_version_tag(&self, c: &Call, set: bool) -> Result<Value, Refusal> {
        let p = &c.params;
        let key = p.required("key")?;
        let value = if set {
            Some(p.text("value")?.unwrap_or_default())
        } else {
            None
        };
        let actor = c.caller()?.actor;
        for _ in 0..TAG_RETRIES {
            let current = self.version_of(c).await?;
            let subject = format!("version {} of {}", current.version, current.model);
            let tags = retagged(&current.tags, &key, value.as_deref(), &subject)?;
            let update = VersionUpdate {
                model: Name::parse("name", &current.model)?,
                version: current.version,
                description: None,
                tags: Some(tags),
                etag: Some(current.revision),
            };
            match app::update_version(&self.store, update, actor.clone()).await {
                Err(e) if is_stale(&e) => continue,
                done => return done.map(|_| json!({})).map_err(Refusal::from),
            }
        }
        Err(kept_changing(&"the version"))
    }

    /// `transition-stage`: the move modelreg's policy allows. Applied, it
    /// answers as MLflow does; waiting for approval, it refuses with the
    /// request to approve; refused by gates or the lifecycle, it lists why.
    pub(super) async fn transition(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let model = Name::parse("name", &p.required("name")?)?;
        let version = p.version("version")?;
        let target = shapes::parse_stage("stage", &p.required("stage")?)?;
        // modelreg always archives the previous production version on entering
        // production, and never archives other staging versions: the flag is read
        // for its type only (README: "Coming from MLflow").
        p.boolean("archive_existing_versions")?;
        let change = StageChange {
            model,
            version,
            target,
            comment: String::new(),
            etag: None,
        };
        match app::request_transition(&self.store, change, c.caller()?).await? {
            TransitionOutcome::Applied(v) => Ok(json!({"model_version": shapes::version(&v)})),
            TransitionOutcome::Pending(request) => Err(awaiting(&request, &c.dashboard)),
        }
    }

    /// The version a call's `name` and `version` name.
    async fn version_of(&self, c: &Call) -> Result<Version, Refusal> {
        let p = &c.params;
        let (model, version) = (
            Name::parse("name", &p.required("name")?)?,
            p.version("version")?,
        );
        let which = VersionRef::Number(version);
        Ok(app::get_version(&self.store, model.as_str(), &which).await?)
    }

    /// Every model's name.
    async fn model_names(&self) -> Result<Vec<String>, Refusal> {
        let mut names = Vec::new();
        let filter = Default::default();
        loop {
            let after = names.last().cloned();
            let (batch, more) =
                app::list_models(&self.store, &filter, after.as_deref(), 1000).await?;
            names.extend(batch.into_iter().map(|m| m.name));
            if !more {
                return Ok(names);
            }
        }
    }
}

fn sortable(v: &Version) -> Sortable<'_> {
    Sortable {
        name: &v.model,
        version: v.version,
        created: v.create_time,
        updated: v.update_time,
    }
}

/// The refusal of a move that waits for approval: it names the request and
/// how to decide it.
fn awaiting(r: &TransitionRequest, dashboard: &str) -> Refusal {
    let id = r.id();
    let gates = if r.gate_results.is_empty() {
        String::new()
    } else {
        let passed = r.gate_results.iter().filter(|g| g.passed).count();
        format!(
            " Gates at request time: {passed} of {} passed.",
            r.gate_results.len()
        )
    };
    Refusal::new(
        StatusCode::CONFLICT,
        "INVALID_STATE",
        format!(
            "Moving version {} of {} to {} needs approval: transition request {id} is open \
             (requested by {}); the version stays in {} until it is approved.{gates} An approver \
             approves it with `modelreg approve {id}` or at {dashboard}/requests/{}",
            r.version,
            r.model,
            shapes::stage_name(r.to_stage),
            r.requester,
            shapes::stage_name(r.from_stage),
            encode_component(&id),
        ),
    )
}
