//! Opaque AIP-158 page tokens: the last key of the page, bound to the
//! request's filter so a token cannot be replayed against a different query.

use crate::domain::{self, SetRef};
use crate::error::Error;
use crate::store::RequestCursor;

pub fn encode(kind: &str, key: &str, query: &str) -> String {
    let bind = &crate::domain::audit::sha256_hex(query.as_bytes())[..16];
    let raw = format!("{kind}\u{1f}{key}\u{1f}{bind}");
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The page tokens of one paged read: the kind of list and the query its
/// tokens are bound to, named once so that reading the request's token and
/// writing the next one cannot disagree.
pub struct Pager {
    /// Which list, so a token of another list is refused.
    kind: &'static str,
    /// The request's filters, as text, so a token is refused under others.
    query: String,
}

impl Pager {
    /// The tokens of the list `kind` under the filters `query`.
    pub fn new(kind: &'static str, query: impl Into<String>) -> Pager {
        Pager {
            kind,
            query: query.into(),
        }
    }

    /// The key the request's `token` records: where its page starts, or
    /// `Ok(None)` on the first page.
    pub fn after(&self, token: &str) -> Result<Option<String>, Error> {
        decode(token, self.kind, &self.query)
    }

    /// The key `token` records, read with `parse_key`: `Ok(None)` on the
    /// first page, an error when the key is not one this list writes.
    pub fn after_key<K>(
        &self,
        token: &str,
        parse_key: impl FnOnce(&str) -> Option<K>,
    ) -> Result<Option<K>, Error> {
        let Some(key) = self.after(token)? else {
            return Ok(None);
        };
        parse_key(&key)
            .map(Some)
            .ok_or_else(|| Error::invalid("page_token", "is not a page token of this query"))
    }

    /// One page for the response: the items in their protobuf form, and the
    /// token of the next page ("" when `more` is false).
    pub fn page<T: Keyed, P>(
        &self,
        items: Vec<T>,
        more: bool,
        to_pb: fn(T) -> P,
    ) -> (Vec<P>, String) {
        let token = match (more, items.last()) {
            (true, Some(last)) => encode(self.kind, &last.page_key(), &self.query),
            _ => String::new(),
        };
        (items.into_iter().map(to_pb).collect(), token)
    }
}

/// What a page token records of a page's last item: where the next
/// page starts.
pub trait Keyed {
    /// The key, as `decode` gives it back.
    fn page_key(&self) -> String;
}

impl Keyed for domain::Model {
    fn page_key(&self) -> String {
        self.name.clone()
    }
}

impl Keyed for domain::Version {
    fn page_key(&self) -> String {
        self.version.to_string()
    }
}

impl Keyed for domain::TransitionRequest {
    fn page_key(&self) -> String {
        format!(
            "{}\u{1e}{}\u{1e}{}",
            self.create_time, self.model, self.number
        )
    }
}

impl Keyed for domain::EvaluationSet {
    fn page_key(&self) -> String {
        format!("{}\u{1e}{}", self.id.name, self.id.version)
    }
}

impl Keyed for domain::Evaluation {
    fn page_key(&self) -> String {
        format!("{}\u{1e}{}", self.version, self.evaluator_version)
    }
}

impl Keyed for domain::Event {
    fn page_key(&self) -> String {
        self.sequence.to_string()
    }
}

pub fn decode(token: &str, kind: &str, query: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(
            "page_token",
            "is not a page token of this query: pass next_page_token from the previous page unchanged, with the same filters",
        )
    };
    if !token.len().is_multiple_of(2) || token.len() > 1024 {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    let mut parts = text.split('\u{1f}');
    let (Some(k), Some(key), Some(bind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if k != kind || bind != &crate::domain::audit::sha256_hex(query.as_bytes())[..16] {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// The key of a ListTransitionRequests page: `create_time\u{1e}model\u{1e}number`.
pub fn request_cursor(key: &str) -> Option<RequestCursor> {
    let mut parts = key.split('\u{1e}');
    let (Some(t), Some(m), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    Some(RequestCursor {
        create_time: t.parse().ok()?,
        model: m.to_owned(),
        number: n.parse().ok()?,
    })
}

/// The key of a ListEvaluationSets page: `name\u{1e}version`.
pub fn set_ref(key: &str) -> Option<SetRef> {
    let (name, version) = key.split_once('\u{1e}')?;
    Some(SetRef {
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

/// The key of a ListEvaluations page: `version\u{1e}evaluator_version`.
pub fn evaluation_key(key: &str) -> Option<(i64, String)> {
    let (version, evaluator) = key.split_once('\u{1e}')?;
    Some((version.parse().ok()?, evaluator.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let t = encode("models", "abc", "tags.a=b");
        assert_eq!(
            decode(&t, "models", "tags.a=b").unwrap(),
            Some("abc".into())
        );
        assert!(decode(&t, "models", "").is_err());
        assert!(decode("zz", "models", "").is_err());
    }
}
