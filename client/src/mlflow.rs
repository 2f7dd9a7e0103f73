//! Reading an MLflow Model Registry through MLflow's own REST API
//! (`/api/2.0/mlflow/…`), for `modelreg import mlflow`: registered models
//! with their tags and aliases, their versions, and the artifact location of
//! a run. Read-only: nothing here writes to MLflow or to modelreg.
//!
//! Credentials come as MLflow's own clients take them: `MLFLOW_TRACKING_TOKEN`
//! (a bearer token) or `MLFLOW_TRACKING_USERNAME` and
//! `MLFLOW_TRACKING_PASSWORD` (HTTP Basic).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// Models asked for per page (MLflow allows up to 1000).
const MODELS_PER_PAGE: &str = "1000";
/// Versions asked for per page.
const VERSIONS_PER_PAGE: &str = "1000";
/// How long one request to MLflow may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read from MLflow, so a wrong URL cannot fill memory.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// A registered model as MLflow returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredModel {
    /// Its name, as MLflow allows them (any text).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// Its aliases, each naming one version.
    #[serde(default)]
    pub aliases: Vec<Alias>,
}

/// One model version as MLflow returns it.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelVersion {
    /// The version number, as a string.
    pub version: String,
    /// Epoch milliseconds (MLflow writes int64 as a number or a string).
    #[serde(default, deserialize_with = "int64")]
    pub creation_timestamp: Option<i64>,
    /// `None`, `Staging`, `Production` or `Archived`.
    #[serde(default)]
    pub current_stage: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Where the model files are (`runs:/…`, a path, `s3://…`).
    #[serde(default)]
    pub source: String,
    /// The run that produced it.
    #[serde(default)]
    pub run_id: String,
    /// A link to the run, if one was given.
    #[serde(default)]
    pub run_link: String,
    /// `READY`, `PENDING_REGISTRATION` or `FAILED_REGISTRATION`.
    #[serde(default)]
    pub status: String,
    /// Its tags.
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// A tag of a model or a version.
#[derive(Debug, Clone, Deserialize)]
pub struct Tag {
    /// The key.
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// An alias of a registered model.
#[derive(Debug, Clone, Deserialize)]
pub struct Alias {
    /// The alias.
    pub alias: String,
    /// The version it names, as a string.
    pub version: String,
}

/// An int64 that MLflow may write as a JSON number or a string.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

/// A page of registered models.
#[derive(Deserialize)]
struct ModelsPage {
    #[serde(default)]
    registered_models: Vec<RegisteredModel>,
    #[serde(default)]
    next_page_token: String,
}

/// A page of versions.
#[derive(Deserialize)]
struct VersionsPage {
    #[serde(default)]
    model_versions: Vec<ModelVersion>,
    #[serde(default)]
    next_page_token: String,
}

/// MLflow's error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    message: String,
}

/// Why a read from MLflow failed.
#[derive(Debug)]
pub enum MlflowError {
    /// MLflow answered with an error (`error_code` such as
    /// `RESOURCE_DOES_NOT_EXIST`), or a non-2xx status without one.
    Refused {
        /// The HTTP status.
        status: u16,
        /// MLflow's error code, or empty.
        code: String,
        /// What it said.
        message: String,
    },
    /// MLflow could not be reached or answered something that is not MLflow's JSON.
    Transport(String),
}

impl std::fmt::Display for MlflowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MlflowError::Refused { status, code, .. } if matches!(status, 401 | 403) => write!(
                f,
                "MLflow refused the credentials ({status} {code}): set MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
            ),
            MlflowError::Refused {
                status,
                code,
                message,
            } => write!(f, "MLflow answered {status} {code}: {message}"),
            MlflowError::Transport(e) => f.write_str(e),
        }
    }
}

impl MlflowError {
    /// Whether MLflow said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, MlflowError::Refused { status: 404, .. })
            || matches!(self, MlflowError::Refused { code, .. } if code == "RESOURCE_DOES_NOT_EXIST")
    }
}

/// An MLflow tracking server's REST API.
pub struct Mlflow {
    /// `http(s)://host[:port][/prefix]`, without a trailing slash.
    base: String,
    /// The `Authorization` header value, if credentials are set.
    authorization: Option<String>,
}

impl Mlflow {
    /// The MLflow server at `url`, with the credentials of the environment.
    pub fn from_env(url: &str) -> Result<Mlflow, String> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.is_empty());
        let authorization = match (
            var("MLFLOW_TRACKING_TOKEN"),
            var("MLFLOW_TRACKING_USERNAME"),
        ) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some(user)) => {
                let password = var("MLFLOW_TRACKING_PASSWORD").unwrap_or_default();
                let pair =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, None) => None,
        };
        Mlflow::new(url, authorization)
    }

    /// The MLflow server at `url` (`http://` or `https://`), sending
    /// `authorization` as the `Authorization` header when given.
    pub fn new(url: &str, authorization: Option<String>) -> Result<Mlflow, String> {
        let base = url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| format!("--from {url:?} is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "--from {url:?}: give the MLflow server's http:// or https:// URL"
            ));
        }
        Ok(Mlflow {
            base,
            authorization,
        })
    }

    /// The URL it reads, as given (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Every registered model, in MLflow's order (by name).
    pub async fn registered_models(&self) -> Result<Vec<RegisteredModel>, MlflowError> {
        let mut models = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![("max_results", MODELS_PER_PAGE)];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page: ModelsPage = self.get("registered-models/search", &query).await?;
            models.extend(page.registered_models);
            if page.next_page_token.is_empty() {
                return Ok(models);
            }
            token = page.next_page_token;
        }
    }

    /// One registered model.
    pub async fn registered_model(&self, name: &str) -> Result<RegisteredModel, MlflowError> {
        #[derive(Deserialize)]
        struct Answer {
            registered_model: RegisteredModel,
        }
        let answer: Answer = self.get("registered-models/get", &[("name", name)]).await?;
        Ok(answer.registered_model)
    }

    /// Every version of the model `name`, in ascending number.
    pub async fn model_versions(&self, name: &str) -> Result<Vec<ModelVersion>, MlflowError> {
        // MLflow's filter language quotes with either quote character.
        let filter = if name.contains('\'') {
            format!("name=\"{name}\"")
        } else {
            format!("name='{name}'")
        };
        let mut versions = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![
                ("filter", filter.as_str()),
                ("max_results", VERSIONS_PER_PAGE),
            ];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let page: VersionsPage = self.get("model-versions/search", &query).await?;
            versions.extend(page.model_versions);
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        versions.sort_by_key(|v| v.version.parse::<i64>().unwrap_or(i64::MAX));
        Ok(versions)
    }

    /// The artifact root of the run `run_id` (where `runs:/RUN/PATH` points).
    pub async fn run_artifact_uri(&self, run_id: &str) -> Result<String, MlflowError> {
        let answer: serde_json::Value = self.get("runs/get", &[("run_id", run_id)]).await?;
        answer
            .pointer("/run/info/artifact_uri")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                MlflowError::Transport(format!("MLflow gave no artifact_uri for run {run_id}"))
            })
    }

    /// Where an MLflow version's `source` points, as a URI modelreg keeps:
    /// `runs:/RUN/PATH` is resolved through the run's artifact root, and
    /// `mlflow-artifacts:/PATH` (artifacts served by the MLflow server) is
    /// the server's artifact download URL. Anything else is kept as it is.
    pub async fn artifact_uri(&self, source: &str) -> Result<String, MlflowError> {
        if let Some(rest) = source.strip_prefix("runs:/") {
            let (run, path) = rest.split_once('/').unwrap_or((rest, ""));
            let root = self.run_artifact_uri(run).await?;
            let uri = match path {
                "" => root,
                path => format!("{}/{path}", root.trim_end_matches('/')),
            };
            return Box::pin(self.artifact_uri(&uri)).await;
        }
        if let Some(path) = source.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts:/p` on this server, or `mlflow-artifacts://host/p`.
            let path = match path.strip_prefix("//") {
                Some(rest) => rest.split_once('/').map_or("", |(_, p)| p),
                None => path.trim_start_matches('/'),
            };
            return Ok(format!(
                "{}/api/2.0/mlflow-artifacts/artifacts/{path}",
                self.base
            ));
        }
        Ok(source.to_owned())
    }

    /// GETs `/api/2.0/mlflow/{endpoint}?{query}` and parses the JSON answer.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<T, MlflowError> {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
            .collect();
        let url = format!(
            "{}/api/2.0/mlflow/{endpoint}?{}",
            self.base,
            query.join("&")
        );
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, self.send(&url))
            .await
            .map_err(|_| {
                MlflowError::Transport(format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))
            })??;
        if !(200..300).contains(&status) {
            let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
            let (code, message) = error.map_or_else(
                || {
                    (
                        String::new(),
                        String::from_utf8_lossy(&body).chars().take(300).collect(),
                    )
                },
                |e| (e.error_code, e.message),
            );
            return Err(MlflowError::Refused {
                status,
                code,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| {
            MlflowError::Transport(format!(
                "{url} did not answer with MLflow's JSON ({e}): is --from an MLflow server?"
            ))
        })
    }

    /// One GET: the status and the body (up to [`MAX_ANSWER_BYTES`]).
    async fn send(&self, url: &str) -> Result<(u16, Bytes), MlflowError> {
        let transport =
            |e: String| MlflowError::Transport(format!("cannot read MLflow at {}: {e}", self.base));
        let uri: hyper::Uri = url.parse().map_err(|e| transport(format!("{e}")))?;
        let mut headers = vec![
            (hyper::header::USER_AGENT, "modelreg-import"),
            (hyper::header::ACCEPT, "application/json"),
        ];
        if let Some(auth) = &self.authorization {
            headers.push((hyper::header::AUTHORIZATION, auth));
        }
        let resp = crate::fetch::get(&uri, &headers).await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_of_a_host_are_taken() {
        assert!(Mlflow::new("http://127.0.0.1:5000/", None).is_ok());
        assert_eq!(
            Mlflow::new("https://m/x/", None).unwrap().url(),
            "https://m/x"
        );
        for bad in ["ftp://m", "127.0.0.1:5000", "http://", "not a url"] {
            assert!(Mlflow::new(bad, None).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn artifact_sources_become_uris_modelreg_keeps() {
        let m = Mlflow::new("http://m:5000", None).unwrap();
        let served = m
            .artifact_uri("mlflow-artifacts:/1/abc/artifacts/model")
            .await;
        assert_eq!(
            served.unwrap(),
            "http://m:5000/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model"
        );
        for kept in ["s3://b/k", "/srv/models/1", "file:///srv/m"] {
            assert_eq!(m.artifact_uri(kept).await.unwrap(), kept);
        }
    }

    #[test]
    fn int64_fields_read_as_numbers_or_strings() {
        for text in [
            r#"{"version":"1","creation_timestamp":1700000000123}"#,
            r#"{"version":"1","creation_timestamp":"1700000000123"}"#,
        ] {
            let v: ModelVersion = serde_json::from_str(text).unwrap();
            assert_eq!(v.creation_timestamp, Some(1_700_000_000_123));
        }
    }
}
