//! `modelreg import mlflow`: copies an MLflow Model Registry into modelreg,
//! read through MLflow's REST API ([`modelreg_client::mlflow`]) and written
//! through modelreg's own RPCs: CreateModel, ImportVersion (admins), SetAlias.
//!
//! Every write is idempotent, so a re-run (or a run after a failure) copies
//! only what is new: models and versions carry request ids derived from the
//! MLflow URL, the model and the version; a version already imported is
//! recognised by its `source.imported_from`; an alias is set only when it
//! points elsewhere. An item modelreg refuses (a name MLflow allows and
//! modelreg does not, say) is reported with the reason and the rest is
//! imported; the exit status is then non-zero.

use std::collections::HashMap;
use std::io::IsTerminal as _;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use modelreg_client::mlflow::{Mlflow, ModelVersion, RegisteredModel};
use modelreg_client::names::parse_stage;
use modelreg_client::{RegistryClient, errors, pb};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use super::{Failure, all_pages, print_json, print_line};

/// `import`: where to copy a registry from.
#[derive(Subcommand)]
pub enum ImportCmd {
    /// Copy an MLflow Model Registry (models, descriptions, tags, versions
    /// with their numbers and stages, aliases); needs an admin token. A
    /// re-run copies only what is new.
    Mlflow(MlflowArgs),
}

/// `import mlflow`.
#[derive(Args)]
pub struct MlflowArgs {
    /// The MLflow tracking server, e.g. http://mlflow:5000. Credentials come
    /// from MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and
    /// MLFLOW_TRACKING_PASSWORD.
    #[arg(long = "from", value_name = "URL")]
    from: String,
    /// Import only this MLflow model (repeatable); default: every model.
    #[arg(long = "model", value_name = "NAME")]
    models: Vec<String>,
}

/// What a run did: printed at the end, as one JSON object with `--json`.
#[derive(Default, Serialize)]
struct Summary {
    /// The MLflow server read.
    from: String,
    /// What this run wrote.
    imported: Counts,
    /// What was found already present and left as it is.
    skipped: Counts,
    /// Models that existed in modelreg before (not created by an import):
    /// their imported versions got the next numbers instead of MLflow's.
    renumbered: Vec<String>,
    /// What modelreg (or MLflow) refused, with the reason.
    refused: Vec<Refusal>,
}

/// Counts of one kind of outcome.
#[derive(Default, Serialize)]
struct Counts {
    /// Registered models.
    models: u64,
    /// Model versions.
    versions: u64,
    /// Versions in a stage other than None.
    stages: u64,
    /// Aliases.
    aliases: u64,
}

/// One thing not imported, and why.
#[derive(Serialize)]
struct Refusal {
    /// The MLflow model.
    model: String,
    /// The MLflow version, when the refusal concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// The alias, when the refusal concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<String>,
    /// Why.
    reason: String,
}

/// Runs `import`.
pub async fn import_cmd(
    client: &mut RegistryClient,
    cmd: ImportCmd,
    json: bool,
) -> Result<(), Failure> {
    let ImportCmd::Mlflow(args) = cmd;
    let source = Mlflow::from_env(&args.from).map_err(Failure::Local)?;
    may_import(client).await?;
    let progress = progress_bar(json);
    progress.set_message("reading MLflow");
    let mut run = Importer {
        client,
        source: &source,
        progress: &progress,
        summary: Summary {
            from: source.url().to_owned(),
            ..Summary::default()
        },
    };
    let models = run.read(&args.models).await?;
    let total: usize = models.iter().map(|(_, versions)| versions.len() + 1).sum();
    progress.set_length(total as u64);
    for (model, versions) in models {
        run.model(model, versions).await?;
    }
    progress.finish_and_clear();
    let summary = run.summary;
    if json {
        print_json(&serde_json::to_value(&summary).unwrap_or_default());
    } else {
        print_summary(&summary);
    }
    match summary.refused.len() {
        0 => Ok(()),
        n => Err(Failure::Local(format!(
            "{n} item(s) were refused (listed above); everything else was imported"
        ))),
    }
}

/// Refuses to start unless the caller may call ImportVersion, so that a
/// publisher's run stops before it has created any model. An empty request
/// tells: the role is checked before the request is read, so an admin gets
/// INVALID_ARGUMENT (and nothing is written) and anyone else
/// PERMISSION_DENIED or UNAUTHENTICATED.
async fn may_import(client: &mut RegistryClient) -> Result<(), Failure> {
    match client
        .import_version(pb::ImportVersionRequest::default())
        .await
    {
        Err(s) if s.code() != Code::InvalidArgument => Err(s.into()),
        _ => Ok(()),
    }
}

/// A progress bar on stderr when a person watches it, else nothing.
fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg:30!} [{bar:30}] {pos}/{len}") {
        bar.set_style(style);
    }
    bar
}

fn print_summary(s: &Summary) {
    let counts = |c: &Counts| {
        format!(
            "{} models, {} versions, {} stages, {} aliases",
            c.models, c.versions, c.stages, c.aliases
        )
    };
    print_line(&format!(
        "imported from {}: {}",
        s.from,
        counts(&s.imported)
    ));
    print_line(&format!(
        "skipped as already present: {}",
        counts(&s.skipped)
    ));
    for model in &s.renumbered {
        print_line(&format!(
            "model {model:?} existed in modelreg before the import: its imported versions got the next numbers"
        ));
    }
    for r in &s.refused {
        let mut what = format!("model {:?}", r.model);
        if let Some(v) = &r.version {
            what.push_str(&format!(" version {v}"));
        }
        if let Some(a) = &r.alias {
            what.push_str(&format!(" alias {a:?}"));
        }
        print_line(&format!("refused: {what}: {}", r.reason));
    }
}

/// A request id for the write about `parts` (the MLflow URL, the model, the
/// version): the same on every run, so a re-run replays instead of
/// writing again.
fn request_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0x1f]);
    }
    format!("mlflow-import-{:x}", hash.finalize())
}

/// Why modelreg refused an item, on one line (the server's message names
/// the field and the rule).
fn reason(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Whether modelreg refused one item (the rest can go on), rather than the
/// whole run (credentials, an unreachable server).
fn refuses_item(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::OutOfRange
    )
}

/// One run of the importer.
struct Importer<'a> {
    /// The modelreg server, as an admin.
    client: &'a mut RegistryClient,
    /// The MLflow server.
    source: &'a Mlflow,
    /// Advanced once per model and per version.
    progress: &'a ProgressBar,
    /// What happened so far.
    summary: Summary,
}

impl Importer<'_> {
    fn refuse(&mut self, model: &str, version: Option<&str>, alias: Option<&str>, reason: String) {
        self.summary.refused.push(Refusal {
            model: model.to_owned(),
            version: version.map(str::to_owned),
            alias: alias.map(str::to_owned),
            reason,
        });
    }

    /// The models to import (every one, or those `names`), each with its
    /// versions in ascending number.
    async fn read(
        &mut self,
        names: &[String],
    ) -> Result<Vec<(RegisteredModel, Vec<ModelVersion>)>, Failure> {
        let unreadable = |e: modelreg_client::mlflow::MlflowError| Failure::Local(e.to_string());
        let names: Vec<String> = if names.is_empty() {
            let all = self.source.registered_models().await.map_err(unreadable)?;
            all.into_iter().map(|m| m.name).collect()
        } else {
            names.to_vec()
        };
        let mut models = Vec::with_capacity(names.len());
        for name in names {
            // `get` rather than the search page: it carries the aliases.
            let model = match self.source.registered_model(&name).await {
                Ok(m) => m,
                Err(e) if e.is_not_found() => {
                    self.refuse(
                        &name,
                        None,
                        None,
                        "MLflow has no such registered model".into(),
                    );
                    continue;
                }
                Err(e) => return Err(unreadable(e)),
            };
            let versions = self
                .source
                .model_versions(&name)
                .await
                .map_err(unreadable)?;
            models.push((model, versions));
        }
        Ok(models)
    }

    /// Imports one model, its versions and its aliases.
    async fn model(
        &mut self,
        m: RegisteredModel,
        versions: Vec<ModelVersion>,
    ) -> Result<(), Failure> {
        self.progress.set_message(m.name.clone());
        self.progress.inc(1);
        let Some(keep_numbers) = self.ensure_model(&m).await? else {
            self.progress.inc(versions.len() as u64);
            return Ok(());
        };
        let existing = pb::ListVersionsRequest {
            model: m.name.clone(),
            page_size: 1000,
            ..Default::default()
        };
        // Versions imported before, by where they came from.
        let mut imported: HashMap<String, i64> = all_pages(self.client, existing)
            .await?
            .into_iter()
            .filter_map(|v| v.source.map(|s| (s.imported_from, v.version)))
            .filter(|(from, _)| !from.is_empty())
            .collect();
        // MLflow's version → the number it has here.
        let mut numbers = HashMap::new();
        let mut renumbered = 0;
        for v in versions {
            self.progress.inc(1);
            if let Some(number) = self
                .version(&m.name, &v, keep_numbers, &mut imported)
                .await?
            {
                renumbered += u64::from(!keep_numbers && number.1);
                numbers.insert(v.version.clone(), number.0);
            }
        }
        if renumbered > 0 {
            self.summary.renumbered.push(m.name.clone());
        }
        self.aliases(&m, &numbers).await
    }

    /// Creates the model unless it exists. Whether to keep MLflow's numbers
    /// (the model is new here, or an earlier import created it), or `None`
    /// when modelreg refused the model.
    async fn ensure_model(&mut self, m: &RegisteredModel) -> Result<Option<bool>, Failure> {
        let name = &m.name;
        let existed = match self
            .client
            .get_model(pb::GetModelRequest { name: name.clone() })
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) if refuses_item(&s) => {
                self.refuse(name, None, None, reason(&s));
                return Ok(None);
            }
            Err(s) => return Err(s.into()),
        };
        let create = pb::CreateModelRequest {
            name: name.clone(),
            description: m.description.clone(),
            tags: m
                .tags
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect(),
            policy: None,
            request_id: request_id(&[self.source.url(), name]),
        };
        let counts = match self.client.create_model(create).await {
            // Created now, or a replay of this importer's own create.
            Ok(_) if !existed => &mut self.summary.imported,
            Ok(_) => &mut self.summary.skipped,
            // This importer created it, from what MLflow said then.
            Err(s) if existed && errors::violated_fields(&s) == ["request_id"] => {
                &mut self.summary.skipped
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                self.summary.skipped.models += 1;
                return Ok(Some(false));
            }
            Err(s) if refuses_item(&s) => {
                self.refuse(name, None, None, reason(&s));
                return Ok(None);
            }
            Err(s) => return Err(s.into()),
        };
        counts.models += 1;
        Ok(Some(true))
    }

    /// Imports one version unless it was imported before: its number here
    /// and whether this call imported it, or `None` when it was refused.
    async fn version(
        &mut self,
        model: &str,
        v: &ModelVersion,
        keep_numbers: bool,
        imported: &mut HashMap<String, i64>,
    ) -> Result<Option<(i64, bool)>, Failure> {
        let from = format!("mlflow:{}/{model}/{}", self.source.url(), v.version);
        let stage_name = match v.current_stage.as_str() {
            "" => "None",
            s => s,
        };
        let staged = u64::from(!stage_name.eq_ignore_ascii_case("none"));
        if let Some(&number) = imported.get(&from) {
            self.summary.skipped.versions += 1;
            self.summary.skipped.stages += staged;
            return Ok(Some((number, false)));
        }
        let refused = |reason: String| Err::<pb::ImportVersionRequest, String>(reason);
        let req = match v.version.parse::<i64>() {
            Err(_) => refused(format!("{:?} is not a version number", v.version)),
            Ok(_) if v.status == "FAILED_REGISTRATION" => {
                refused("its registration failed in MLflow".into())
            }
            Ok(number) => match parse_stage(stage_name) {
                Err(e) => refused(e),
                Ok(stage) => {
                    self.import_request(model, v, number, keep_numbers, stage, &from)
                        .await?
                }
            },
        };
        let req = match req {
            Ok(req) => req,
            Err(reason) => {
                self.refuse(model, Some(&v.version), None, reason);
                return Ok(None);
            }
        };
        let answer = match self.client.import_version(req).await {
            Ok(a) => a.into_inner(),
            Err(s) if refuses_item(&s) => {
                self.refuse(model, Some(&v.version), None, reason(&s));
                return Ok(None);
            }
            Err(s) => return Err(s.into()),
        };
        let number = answer.version.map_or(0, |v| v.version);
        imported.insert(from, number);
        let counts = if answer.created {
            &mut self.summary.imported
        } else {
            &mut self.summary.skipped
        };
        counts.versions += 1;
        counts.stages += staged;
        Ok(Some((number, answer.created)))
    }

    /// The ImportVersion call for MLflow's version `v` (number `number`), or
    /// why it cannot be made.
    async fn import_request(
        &self,
        model: &str,
        v: &ModelVersion,
        number: i64,
        keep_numbers: bool,
        stage: pb::Stage,
        from: &str,
    ) -> Result<Result<pb::ImportVersionRequest, String>, Failure> {
        let artifact_uri = match self.source.artifact_uri(&v.source).await {
            Ok(uri) => uri,
            Err(e) if e.is_not_found() => {
                return Ok(Err(format!(
                    "its source {:?} names a run MLflow does not have",
                    v.source
                )));
            }
            Err(e) => return Err(Failure::Local(e.to_string())),
        };
        let original_create_time = v.creation_timestamp.map(|ms| prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        });
        Ok(Ok(pb::ImportVersionRequest {
            model: model.to_owned(),
            version: if keep_numbers { number } else { 0 },
            artifact_uri,
            artifact_digest: String::new(),
            source: Some(pb::Source {
                pipeline_url: v.run_link.clone(),
                run_id: v.run_id.clone(),
                imported_from: from.to_owned(),
                original_create_time,
                ..Default::default()
            }),
            training_metrics: HashMap::new(),
            tags: v
                .tags
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect(),
            description: v.description.clone(),
            stage: stage as i32,
            request_id: request_id(&[self.source.url(), model, &v.version]),
        }))
    }

    /// Points the model's aliases where MLflow's point, unless they already do.
    async fn aliases(
        &mut self,
        m: &RegisteredModel,
        numbers: &HashMap<String, i64>,
    ) -> Result<(), Failure> {
        if m.aliases.is_empty() {
            return Ok(());
        }
        let name = &m.name;
        let current = self
            .client
            .get_model(pb::GetModelRequest { name: name.clone() })
            .await?
            .into_inner()
            .model
            .map(|m| m.aliases)
            .unwrap_or_default();
        for a in &m.aliases {
            let Some(&version) = numbers.get(&a.version) else {
                let reason = format!("it names version {}, which was not imported", a.version);
                self.refuse(name, None, Some(&a.alias), reason);
                continue;
            };
            if current.get(&a.alias) == Some(&version) {
                self.summary.skipped.aliases += 1;
                continue;
            }
            let set = pb::SetAliasRequest {
                model: name.clone(),
                alias: a.alias.clone(),
                version,
            };
            match self.client.set_alias(set).await {
                Ok(_) => self.summary.imported.aliases += 1,
                Err(s) if refuses_item(&s) => {
                    self.refuse(name, None, Some(&a.alias), reason(&s));
                }
                Err(s) => return Err(s.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_distinct_and_short_enough() {
        let a = request_id(&["http://m", "fraud", "1"]);
        assert_eq!(a, request_id(&["http://m", "fraud", "1"]));
        assert_ne!(a, request_id(&["http://m", "fraud1", ""]));
        assert_ne!(a, request_id(&["http://m", "fraud"]));
        assert!(a.len() <= 128 && a.bytes().all(|b| b.is_ascii_graphic()));
    }
}
