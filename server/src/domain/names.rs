//! Names and the limits of every input: "parse, don't validate". A [`Name`]
//! or a checked field can only exist once its input met the documented
//! limits, so nothing below the edges has to doubt what it is given.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

use super::*;

/// A model, evaluation set or environment name: `[a-z0-9][a-z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

/// Which bytes a rule allows.
type ByteRule = fn(u8) -> bool;

/// Checks an identifier: 1 to `max` bytes, the first passing `first` and
/// every one passing `rest`; `rule` says the rule in the error.
fn identifier(
    field: &str,
    raw: &str,
    max: usize,
    (first, rest): (ByteRule, ByteRule),
    rule: &str,
) -> Result<String> {
    let valid = !raw.is_empty()
        && raw.len() <= max
        && raw.bytes().next().is_some_and(first)
        && raw.bytes().all(rest);
    if valid {
        Ok(raw.to_owned())
    } else if raw.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else {
        Err(Error::invalid(
            field,
            format!("{:?} is not {rule}", truncate(raw, 64)),
        ))
    }
}

/// The bytes of a model or alias name after the first: `[a-z0-9._-]`.
fn name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

impl Name {
    /// Parses `raw` as the value of request field `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Name> {
        identifier(
            field,
            raw,
            128,
            (|b| b.is_ascii_lowercase() || b.is_ascii_digit(), name_byte),
            "a valid name: use 1 to 128 characters of [a-z0-9._-], starting with a letter or digit",
        )
        .map(Name)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An alias: `[a-z][a-z0-9._-]{0,63}`. It starts with a letter so that it is
/// never mistaken for a version number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    /// Parses `raw` as the value of request field `field`.
    pub fn parse(field: &str, raw: &str) -> Result<AliasName> {
        identifier(
            field,
            raw,
            64,
            (|b| b.is_ascii_lowercase(), name_byte),
            "a valid alias: use 1 to 64 characters of [a-z0-9._-], starting with a letter",
        )
        .map(AliasName)
    }

    /// The alias as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a version number field: at least 1.
pub fn parse_version_number(field: &str, raw: i64) -> Result<i64> {
    if raw >= 1 {
        Ok(raw)
    } else {
        Err(Error::invalid(
            field,
            format!("version numbers start at 1; got {raw}"),
        ))
    }
}

/// Checks a free-text field against [`MAX_TEXT_BYTES`] and refuses control
/// characters other than newline and tab: C0 (ESC, CR, BEL, …), DEL and C1
/// would let a stored comment rewrite the terminal of whoever lists it.
pub fn parse_text(field: &str, raw: &str) -> Result<String> {
    if raw.len() > MAX_TEXT_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes; at most {MAX_TEXT_BYTES} are allowed",
                raw.len()
            ),
        ));
    }
    if let Some(c) = forbidden_control(raw) {
        return Err(Error::invalid(
            field,
            format!(
                "must not contain control characters other than newline and tab; found U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// The first C0/C1 control character (or DEL) other than newline and tab.
pub fn forbidden_control(raw: &str) -> Option<char> {
    raw.chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
}

/// Checks a tag map: at most [`MAX_TAGS`] entries, keys 1 to 256 bytes without
/// control characters, key and value together at most [`MAX_TAG_BYTES`].
pub fn parse_tags(field: &str, raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut v = Violations::default();
    if raw.len() > MAX_TAGS {
        v.add(
            field,
            format!("has {} tags; at most {MAX_TAGS} are allowed", raw.len()),
        );
    }
    for (key, value) in raw {
        let path = format!("{field}[{}]", truncate(key, 64));
        if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control() || c == '=') {
            v.add(
                &path,
                "tag keys must be 1 to 256 bytes without control characters or '='",
            );
        } else if key.len() + value.len() > MAX_TAG_BYTES {
            v.add(
                &path,
                format!(
                    "is {} bytes; a tag's key and value may have at most {MAX_TAG_BYTES} together",
                    key.len() + value.len()
                ),
            );
        } else if forbidden_control(value).is_some() {
            v.add(
                &path,
                "tag values must not contain control characters other than newline and tab",
            );
        }
    }
    v.finish()?;
    Ok(raw.clone())
}

/// Checks a metric map: finite numbers, names like [`Name`] but also allowing
/// upper case and '/', at most [`MAX_METRICS`] entries.
pub fn parse_metrics(field: &str, raw: &BTreeMap<String, f64>) -> Result<BTreeMap<String, f64>> {
    let mut v = Violations::default();
    if raw.len() > MAX_METRICS {
        v.add(
            field,
            format!(
                "has {} metrics; at most {MAX_METRICS} are allowed",
                raw.len()
            ),
        );
    }
    for (name, value) in raw {
        let path = format!("{field}[{}]", truncate(name, 64));
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !name_ok {
            v.add(
                &path,
                "metric names must be 1 to 128 characters of [A-Za-z0-9._/-]",
            );
        } else if !value.is_finite() {
            v.add(
                &path,
                format!("metric values must be finite numbers; got {value}"),
            );
        }
    }
    v.finish()?;
    Ok(raw.clone())
}

/// Whether `hex` is a SHA-256 as 64 lowercase hex digits.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an artifact digest: empty, or `sha256:` and 64 lowercase hex digits.
pub fn parse_digest(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let ok = raw.strip_prefix("sha256:").is_some_and(is_sha256_hex);
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Error::invalid(
            field,
            "must be empty or \"sha256:\" followed by 64 lowercase hex digits",
        ))
    }
}

/// Checks an artifact URI: required, at most [`MAX_TEXT_BYTES`], no whitespace
/// or control characters, and with a scheme or an absolute path.
pub fn parse_artifact_uri(field: &str, raw: &str) -> Result<String> {
    if raw.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let uri = parse_text(field, raw)?;
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    let has_scheme = uri
        .split_once("://")
        .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
    if !has_scheme && !uri.starts_with('/') {
        return Err(Error::invalid(
            field,
            "must be a URI with a scheme (s3://…, gs://…, file:///…) or an absolute path",
        ));
    }
    Ok(uri)
}

/// Checks an AIP-155 request id: empty, or 1 to 128 printable ASCII characters.
pub fn parse_request_id(field: &str, raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_REQUEST_ID_BYTES || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1 to {MAX_REQUEST_ID_BYTES} printable ASCII characters (a UUID is ideal)"
            ),
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// Checks a page size: negative is refused, 0 means the default, larger than
/// the maximum is clamped to it (AIP-158).
pub fn parse_page_size(field: &str, raw: i32) -> Result<usize> {
    match raw {
        n if n < 0 => Err(Error::invalid(
            field,
            format!("must not be negative; got {n}"),
        )),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Checks an etag: empty (no check) or the revision number this server issued.
pub fn parse_etag(field: &str, raw: &str) -> Result<Option<i64>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not an etag issued by this server"))
}

/// Formats a revision as the etag callers see.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// Shortens text quoted back in error messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Checks an evaluation set version: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn parse_set_version(field: &str, raw: &str) -> Result<String> {
    parse_label(
        field,
        raw,
        "an evaluation set version such as 2026-06 or v3",
    )
}

/// Checks an evaluator version (the version of the metric code):
/// `[A-Za-z0-9][A-Za-z0-9._+-]{0,63}`.
pub fn parse_evaluator_version(field: &str, raw: &str) -> Result<String> {
    parse_label(field, raw, "an evaluator version such as 1.4.2")
}

fn parse_label(field: &str, raw: &str, what: &str) -> Result<String> {
    let label_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+');
    let rule = format!(
        "{what}: use 1 to 64 characters of [A-Za-z0-9._+-], starting with a letter or digit"
    );
    identifier(
        field,
        raw,
        64,
        (|b| b.is_ascii_alphanumeric(), label_byte),
        &rule,
    )
}

/// Checks a required content digest: `sha256:` and 64 lowercase hex digits.
pub fn parse_required_digest(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    parse_digest(field, raw)
}

/// Checks a URL that is shown to people as a link: empty, or an absolute
/// `http`/`https` URL with a host. Any other scheme (`javascript:`, `data:`,
/// `file:`) could run or read something where the link is clicked.
pub fn parse_link(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let text = parse_text(field, raw)?;
    let bad = || {
        Error::invalid(
            field,
            "must be an absolute http:// or https:// URL with a host",
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if !scheme_ok || host.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '\\') {
        return Err(bad());
    }
    Ok(text)
}

/// Checks an optional URI (report links): empty, or like an artifact URI.
pub fn parse_optional_uri(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        Ok(String::new())
    } else {
        parse_artifact_uri(field, raw)
    }
}

/// Checks a short label (a live metric's name, a worker's name): 1 to 128
/// printable characters.
pub fn parse_short_text(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else if raw.len() > 128 || raw.chars().any(char::is_control) {
        Err(Error::invalid(
            field,
            "must be at most 128 printable characters",
        ))
    } else {
        Ok(raw.to_owned())
    }
}
