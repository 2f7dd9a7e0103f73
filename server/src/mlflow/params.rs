//! An MLflow call's parameters: the query string of a GET, the JSON object
//! of every other method, read the way MLflow's server reads them (a GET's
//! list is its repeated key, numbers and booleans arrive as text) and
//! checked by type, so a wrong type is `INVALID_PARAMETER_VALUE` naming the
//! field, never a 500.

use std::collections::BTreeMap;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap};
use hyper::{Method, Uri};
use serde_json::{Map, Value};

use super::Refusal;

/// The largest body accepted: the gRPC port's message limit.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How much of an oversize body is read (and dropped) so the refusal
/// reaches the client: a socket closed with unread data is reset, and the
/// reset can overtake the answer. Past this the connection is just closed.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// A request's body, read whole before anything is answered (an answer
/// sent before the body was read can be lost the same way); `Err` when it
/// is larger than [`MAX_BODY_BYTES`] or the connection failed.
pub async fn read_body(mut body: Incoming) -> Result<Bytes, Refusal> {
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Refusal::invalid("the request body could not be read"));
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.len());
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        } else if seen > DRAIN_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(Refusal::invalid(format!(
            "the request body is larger than {MAX_BODY_BYTES} bytes (4 MiB)"
        )));
    }
    Ok(Bytes::from(kept))
}

/// The parameters of one call.
#[derive(Debug)]
pub enum Params {
    /// A GET's (or HEAD's) query string, in order.
    Query(Vec<(String, String)>),
    /// The JSON object of a POST, PATCH or DELETE.
    Json(Map<String, Value>),
}

impl Params {
    /// Reads `req`'s parameters. A body must be `application/json` (what
    /// MLflow's client sends); that also keeps a cross-site form from
    /// posting to a local-mode server, since a page can send JSON only after
    /// a CORS preflight this listener never grants.
    pub fn parse(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Params, Refusal> {
        if matches!(*method, Method::GET | Method::HEAD) {
            let query = uri.query().unwrap_or("");
            return Ok(Params::Query(
                form_urlencoded::parse(query.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ));
        }
        check_json(headers)?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params::Json(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Params::Json(map)),
            Ok(_) => Err(Refusal::invalid(
                "the request body must be a JSON object, like {\"name\": \"fraud\"}",
            )),
            Err(e) => Err(Refusal::invalid(format!(
                "the request body is not valid JSON: {e}"
            ))),
        }
    }

    /// A text field; `None` when absent (or JSON null).
    pub fn text(&self, key: &str) -> Result<Option<String>, Refusal> {
        match self {
            Params::Query(pairs) => {
                Ok(pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            }
            Params::Json(map) => match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(wrong_type(key, "a string", other)),
            },
        }
    }

    /// A text field the call cannot do without.
    pub fn required(&self, key: &str) -> Result<String, Refusal> {
        match self.text(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(Refusal::invalid(format!(
                "missing value for required parameter '{key}'"
            ))),
        }
    }

    /// A version number, which MLflow sends as a string ("3").
    pub fn version(&self, key: &str) -> Result<i64, Refusal> {
        let raw = match self {
            Params::Json(map) => match map.get(key) {
                Some(Value::Number(n)) => n.to_string(),
                _ => self.required(key)?,
            },
            Params::Query(_) => self.required(key)?,
        };
        match raw.trim().parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Refusal::invalid(format!(
                "parameter '{key}' must be a version number (1, 2, …), got {:?}",
                crate::domain::truncate(&raw, 64)
            ))),
        }
    }

    /// A whole number, as JSON number or as text.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, Refusal> {
        let raw = match self {
            Params::Json(map) => match map.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => return Err(wrong_type(key, "an integer", other)),
            },
            Params::Query(_) => match self.text(key)? {
                None => return Ok(None),
                Some(s) => s,
            },
        };
        raw.trim().parse::<i64>().map(Some).map_err(|_| {
            Refusal::invalid(format!("parameter '{key}' must be an integer, got {raw:?}"))
        })
    }

    /// A boolean, as JSON boolean or as `true`/`false`.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, Refusal> {
        let raw = match self {
            Params::Json(map) => match map.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Bool(b)) => return Ok(Some(*b)),
                Some(Value::String(s)) => s.clone(),
                Some(other) => return Err(wrong_type(key, "a boolean", other)),
            },
            Params::Query(_) => match self.text(key)? {
                None => return Ok(None),
                Some(s) => s,
            },
        };
        match raw.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(Refusal::invalid(format!(
                "parameter '{key}' must be true or false, got {raw:?}"
            ))),
        }
    }

    /// A list of strings: a JSON array, or a GET's repeated key.
    pub fn texts(&self, key: &str) -> Result<Vec<String>, Refusal> {
        match self {
            Params::Query(pairs) => Ok(pairs
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect()),
            Params::Json(map) => match map.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(wrong_type(key, "a list of strings", other)),
                    })
                    .collect(),
                Some(other) => Err(wrong_type(key, "a list of strings", other)),
            },
        }
    }

    /// MLflow's tags: a list of `{"key": …, "value": …}` objects.
    pub fn tags(&self, key: &str) -> Result<BTreeMap<String, String>, Refusal> {
        let Params::Json(map) = self else {
            return Ok(BTreeMap::new());
        };
        let items = match map.get(key) {
            None | Some(Value::Null) => return Ok(BTreeMap::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(wrong_type(
                    key,
                    "a list of {\"key\", \"value\"} objects",
                    other,
                ));
            }
        };
        let mut tags = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let (Some(Value::String(k)), v) = (item.get("key"), item.get("value")) else {
                return Err(Refusal::invalid(format!(
                    "{key}[{i}] must be an object with a string \"key\""
                )));
            };
            let v = match v {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(v)) => v.clone(),
                Some(other) => {
                    return Err(wrong_type(&format!("{key}[{i}].value"), "a string", other));
                }
            };
            tags.insert(k.clone(), v);
        }
        Ok(tags)
    }
}

/// Refuses a body that is not declared `application/json`.
fn check_json(headers: &HeaderMap) -> Result<(), Refusal> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if declared == Some(true) {
        Ok(())
    } else {
        Err(Refusal::invalid(
            "send the parameters as a JSON object with Content-Type: application/json",
        ))
    }
}

fn wrong_type(key: &str, want: &str, got: &Value) -> Refusal {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    Refusal::invalid(format!("parameter '{key}' must be {want}, not {kind}"))
}
