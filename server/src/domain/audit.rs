//! The hash chain that makes the event log tamper-evident.
//!
//! Each event's hash is SHA-256 over its canonical content and the previous
//! event's hash, so editing, inserting or deleting any row breaks every link
//! after it. This module only computes and checks hashes; it never writes.

use sha2::{Digest, Sha256};

use crate::domain::Event;

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The hash of an event with the given content, chained to `prev_hash`.
///
/// The content is encoded as a JSON array in a fixed field order; `details`
/// is a `serde_json::Value` whose objects keep their keys sorted, so the same
/// event always hashes the same.
pub fn event_hash(e: &Event) -> String {
    let canonical = serde_json::json!([
        e.sequence,
        e.kind.as_str(),
        e.model,
        e.version,
        e.from_stage.map(|s| s.as_str()),
        e.to_stage.map(|s| s.as_str()),
        e.cause.map(|c| c.as_str()),
        e.actor,
        e.comment,
        e.occur_time,
        e.details,
        e.transition_request_id,
        e.prev_hash,
    ]);
    sha256_hex(canonical.to_string().as_bytes())
}

/// Walks events in sequence order and reports the first broken one.
#[derive(Debug)]
pub struct ChainVerifier {
    /// The sequence the next event must have.
    expected_sequence: u64,
    /// The hash the next event must link to.
    expected_prev: String,
    /// Events checked so far.
    pub checked: u64,
    /// The first sequence found broken, if any.
    pub first_bad: Option<u64>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_sequence: 1,
            expected_prev: GENESIS_HASH.to_owned(),
            checked: 0,
            first_bad: None,
        }
    }
}

impl ChainVerifier {
    /// Checks the next event; returns false once the chain is broken.
    pub fn check(&mut self, e: &Event) -> bool {
        if self.first_bad.is_some() {
            return false;
        }
        self.checked += 1;
        let ok = e.sequence == self.expected_sequence
            && e.prev_hash == self.expected_prev
            && event_hash(e) == e.hash;
        if !ok {
            // A missing row shows up as the first event whose sequence or link is off.
            self.first_bad = Some(e.sequence.min(self.expected_sequence));
            return false;
        }
        self.expected_sequence += 1;
        self.expected_prev = e.hash.clone();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    /// Stored details are parsed back before their hash is checked, so every
    /// number must parse to exactly the value that was hashed.
    #[test]
    fn sha256_is_lowercase_hex_of_every_byte() {
        // FIPS 180-2's example, and the empty input's digest.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha256_hex(b"").starts_with("e3b0c442"));
    }

    #[test]
    fn hashes_survive_a_round_trip_of_awkward_floats_through_json() {
        let awkward = [
            0.1 + 0.2,
            0.0010000000000000009,
            1e-300,
            123456.78901234567,
            -0.0,
        ];
        let e = Event {
            sequence: 7,
            kind: EventKind::EvaluationAttached,
            model: "m".into(),
            version: 1,
            from_stage: None,
            to_stage: None,
            cause: None,
            actor: "a".into(),
            comment: String::new(),
            occur_time: 1,
            details: serde_json::json!({ "metrics": awkward }),
            transition_request_id: String::new(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let stored = e.details.to_string();
        let reread = Event {
            details: serde_json::from_str(&stored).unwrap(),
            ..e.clone()
        };
        assert_eq!(event_hash(&reread), event_hash(&e));
    }
}
