//! The registry's own vocabulary and its pure rules: names and input limits,
//! models and versions, the lifecycle, events and the hash chain, policies
//! and gates, transition requests, evaluations. Nothing here knows about
//! protobuf, tonic, HTTP or SQL, and nothing here does I/O.
//!
//! Every submodule's public items are re-exported here, so callers name
//! `crate::domain::Stage`, not the file it lives in.

pub mod audit;
pub mod consumer;
pub mod evaluation;
pub mod event;
pub mod gates;
pub mod lifecycle;
pub mod model;
pub mod names;
pub mod policy;
pub mod requests;
pub mod text;

pub use consumer::*;
pub use evaluation::*;
pub use event::*;
pub use gates::*;
pub use lifecycle::*;
pub use model::*;
pub use names::*;
pub use policy::*;
pub use requests::*;
pub use text::*;

use crate::error::{Error, FieldViolation, Result};

/// Most tags a model or version may carry.
pub const MAX_TAGS: usize = 64;
/// Largest tag, key and value together, in bytes.
pub const MAX_TAG_BYTES: usize = 4096;
/// Largest free-text field (description, comment, URI), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most metrics one version may carry.
pub const MAX_METRICS: usize = 256;
/// Page size used when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest request id (AIP-155).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Collects every problem of a request so the caller learns them all at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records one bad field.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Runs a parser and keeps its value, or records its violations.
    pub fn take<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(Error::InvalidArgument(mut v)) => {
                self.0.append(&mut v);
                None
            }
            Err(other) => {
                self.add("", other.to_string());
                None
            }
        }
    }

    /// `Ok(())` when nothing was recorded, else the `InvalidArgument` error.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// Parses every field of a request at once: `all((parse_a, parse_b, …))`
/// gives the values, or one `InvalidArgument` naming every bad field.
pub fn all<P: Parsed>(parsed: P) -> Result<P::Values> {
    parsed.all()
}

/// A tuple of parse results, for [`all`].
pub trait Parsed {
    /// The tuple of the parsed values.
    type Values;
    /// The values, or every violation of every field.
    fn all(self) -> Result<Self::Values>;
}

// One impl per tuple length: the shape of a request is at most this wide.
macro_rules! parsed_tuple {
    ($($t:ident $v:ident),+) => {
        impl<$($t),+> Parsed for ($(Result<$t>,)+) {
            type Values = ($($t,)+);
            fn all(self) -> Result<Self::Values> {
                let mut violations = Violations::default();
                let ($($v,)+) = self;
                $(let $v = violations.take($v);)+
                violations.finish()?;
                Ok(($($v.expect("no violation, so every field parsed"),)+))
            }
        }
    };
}

parsed_tuple!(A a);
parsed_tuple!(A a, B b);
parsed_tuple!(A a, B b, C c);
parsed_tuple!(A a, B b, C c, D d);
parsed_tuple!(A a, B b, C c, D d, E e);
parsed_tuple!(A a, B b, C c, D d, E e, F f);
parsed_tuple!(A a, B b, C c, D d, E e, F f, G g);
parsed_tuple!(A a, B b, C c, D d, E e, F f, G g, H h);
parsed_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i);
parsed_tuple!(A a, B b, C c, D d, E e, F f, G g, H h, I i, J j);

/// The caller, as recorded in events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

/// The longest actor name, in characters.
pub const MAX_ACTOR_CHARS: usize = 256;

impl Actor {
    /// The identity used when a caller names none.
    pub fn anonymous() -> Actor {
        Actor("anonymous".into())
    }

    /// Checks a caller's name, wherever it comes from (the actor header, the
    /// dashboard's "acting as" field, a token file's identity): 1 to
    /// [`MAX_ACTOR_CHARS`] characters without control characters.
    pub fn parse(field: &str, raw: &str) -> Result<Actor> {
        if raw.is_empty()
            || raw.chars().count() > MAX_ACTOR_CHARS
            || raw.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                field,
                format!("must be 1 to {MAX_ACTOR_CHARS} printable characters"),
            ));
        }
        Ok(Actor(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["a", "fraud-detector", "0x.model_v2", &"a".repeat(128)] {
            assert!(Name::parse("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Fraud", "-a", ".a", "a b", "ä", &"a".repeat(129), "a/b"] {
            assert!(Name::parse("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aliases_never_look_like_numbers() {
        assert!(AliasName::parse("alias", "champion").is_ok());
        assert!(AliasName::parse("alias", "7").is_err());
        assert!(AliasName::parse("alias", "7a").is_err());
    }

    #[test]
    fn metrics_must_be_finite() {
        let mut m = BTreeMap::new();
        m.insert("auc".to_string(), f64::NAN);
        assert!(parse_metrics("training_metrics", &m).is_err());
        m.insert("auc".to_string(), 0.9);
        assert!(parse_metrics("training_metrics", &m).is_ok());
    }

    #[test]
    fn page_sizes_clamp_and_refuse_negatives() {
        assert_eq!(parse_page_size("p", 0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(parse_page_size("p", 5000).unwrap(), MAX_PAGE_SIZE);
        assert!(parse_page_size("p", -1).is_err());
    }

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_250_000), "2000-02-29T00:00:00.25Z");
        assert_eq!(rfc3339(1_780_315_200_000_000), "2026-06-01T12:00:00Z");
        assert_eq!(human_duration(90 * 1_000_000), "1m30s");
        assert_eq!(human_duration(30 * 86_400 * 1_000_000), "30d");
    }

    #[test]
    fn imported_numbers_are_kept_above_the_latest_or_refused() {
        assert_eq!(import_number("m", 0, 4).unwrap(), 5);
        assert_eq!(import_number("m", 9, 4).unwrap(), 9);
        for taken in [1, 4] {
            let err = import_number("m", taken, 4).unwrap_err();
            assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        }
    }

    #[test]
    fn etags_round_trip() {
        assert_eq!(parse_etag("etag", &etag(7)).unwrap(), Some(7));
        assert!(parse_etag("etag", "abc").is_err());
        assert_eq!(parse_etag("etag", "").unwrap(), None);
    }
}
