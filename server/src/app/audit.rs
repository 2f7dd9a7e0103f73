//! Verifying the hash-chained event log and the anchors recorded from it.

use std::collections::HashMap;

use crate::domain::EventFilter;
use crate::domain::audit::ChainVerifier;
use crate::error::Result;
use crate::store::{ChainReport, Db, Store};

/// Walks the whole chain, then checks `anchors` (sequence, hash) recorded
/// earlier: each must still be in the log with the same hash.
pub async fn verify_chain(store: &Store, anchors: &[(u64, String)]) -> Result<ChainReport> {
    read_db!(store, |db| async {
        let wanted: HashMap<u64, &str> = anchors.iter().map(|(s, h)| (*s, h.as_str())).collect();
        let mut found: HashMap<u64, String> = HashMap::new();
        let mut verifier = ChainVerifier::default();
        let mut head = None;
        let mut after = 0u64;
        let all = EventFilter::default();
        loop {
            let page = db.events(&all, after, None, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.sequence;
            for e in &page {
                if !verifier.check(e) {
                    let first_bad = verifier.first_bad.unwrap_or(e.sequence);
                    return Ok(ChainReport {
                        ok: false,
                        checked: verifier.checked,
                        first_bad,
                        head: None,
                        problem: format!(
                            "event {first_bad}'s hash, link to the event before or sequence is wrong: \
                         the log was edited or rows were removed"
                        ),
                    });
                }
                if wanted.contains_key(&e.sequence) {
                    found.insert(e.sequence, e.hash.clone());
                }
                head = Some((e.sequence, e.hash.clone()));
            }
        }
        let mut report = ChainReport {
            ok: true,
            checked: verifier.checked,
            first_bad: 0,
            head,
            problem: String::new(),
        };
        let mut sorted: Vec<(u64, &str)> = wanted.into_iter().collect();
        sorted.sort_unstable();
        for (sequence, hash) in sorted {
            let problem = match found.get(&sequence) {
                Some(h) if h == hash => continue,
                Some(_) => format!(
                    "anchor {sequence}: the event there has another hash now: the log up to it was \
                 rewritten"
                ),
                None => format!(
                    "anchor {sequence}: the log ends at {}: events were cut from its end",
                    report.head.as_ref().map_or(0, |h| h.0)
                ),
            };
            report.ok = false;
            report.first_bad = sequence;
            report.problem = problem;
            break;
        }
        Ok(report)
    })
}
