//! Durable consumers: their spec and its defaults, member ids, each model's
//! place in a consumer, dead letters, and the pure rules of assignment
//! (sticky, balanced, never moving a model with an event in flight except
//! from a member that is gone) and of redelivery backoff.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strum::{Display, EnumString, IntoStaticStr};

use super::*;

/// A lease when the spec leaves it unset, in milliseconds.
pub const DEFAULT_LEASE_MS: i64 = 10_000;
/// The shortest and longest lease, in milliseconds.
pub const LEASE_RANGE_MS: (i64, i64) = (1_000, 300_000);
/// Deliveries of one event when the spec leaves it at 0.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// The most deliveries of one event a spec may ask for.
pub const MAX_MAX_DELIVERIES: u32 = 100;
/// The first redelivery's wait when the spec leaves it unset, in ms.
pub const DEFAULT_BACKOFF_MS: i64 = 1_000;
/// The longest wait between deliveries, in milliseconds.
pub const MAX_BACKOFF_MS: i64 = 300_000;
/// `redeliver_time` of an event that is out with a member.
pub const OUT_WITH_MEMBER: i64 = i64::MAX;

/// What a consumer does with a model's later events once one is parked.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr, EnumString, Display,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnDeadLetter {
    /// They wait for a retry.
    Block,
    /// They go on.
    Skip,
}

/// Where a dead letter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum DeadLetterState {
    /// Not being delivered.
    Parked,
    /// Being delivered again.
    Retrying,
    /// Acknowledged after a retry.
    Resolved,
}

impl DeadLetterState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A spec as a joining member gives it: unset settings are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerSpec {
    /// The filter.
    pub models: Vec<String>,
    /// The filter.
    pub kinds: Vec<EventKind>,
    /// The filter.
    pub to_stages: Vec<Stage>,
    /// Where a new consumer starts; `None` is the end of the log.
    pub start_after: Option<u64>,
    /// Lease, ms.
    pub lease_ms: Option<i64>,
    /// Deliveries before parking.
    pub max_deliveries: Option<u32>,
    /// First redelivery wait, ms.
    pub backoff_ms: Option<i64>,
    /// What parking does to later events.
    pub on_dead_letter: Option<OnDeadLetter>,
}

/// A consumer's settings as stored: the spec with its defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerSettings {
    /// Only these models; empty for all.
    pub models: Vec<String>,
    /// Only these kinds (stored names); empty for all.
    pub types: Vec<String>,
    /// Only these target stages (stored names); empty for all.
    pub to_stages: Vec<String>,
    /// Lease, ms.
    pub lease_ms: i64,
    /// Deliveries before parking.
    pub max_deliveries: u32,
    /// First redelivery wait, ms.
    pub backoff_ms: i64,
    /// What parking does to later events.
    pub on_dead_letter: OnDeadLetter,
}

impl ConsumerSpec {
    /// Checks the ranges of the settings a caller gave.
    pub fn validate(&self) -> Result<()> {
        let mut v = Violations::default();
        if let Some(l) = self.lease_ms
            && !(LEASE_RANGE_MS.0..=LEASE_RANGE_MS.1).contains(&l)
        {
            v.add("spec.lease", "must be between 1 second and 5 minutes");
        }
        if let Some(m) = self.max_deliveries
            && !(1..=MAX_MAX_DELIVERIES).contains(&m)
        {
            v.add(
                "spec.max_deliveries",
                format!("must be between 1 and {MAX_MAX_DELIVERIES} (0 means the default, 5)"),
            );
        }
        if let Some(b) = self.backoff_ms
            && !(0..=MAX_BACKOFF_MS).contains(&b)
        {
            v.add("spec.backoff", "must be between 0 and 5 minutes");
        }
        v.finish()
    }

    /// The settings of a consumer this spec creates.
    pub fn settings(&self) -> ConsumerSettings {
        let mut types: Vec<String> = self.kinds.iter().map(|k| k.as_str().to_owned()).collect();
        types.sort();
        types.dedup();
        let mut to_stages: Vec<String> = self.to_stages.iter().map(|s| s.to_string()).collect();
        to_stages.sort();
        to_stages.dedup();
        let mut models = self.models.clone();
        models.sort();
        models.dedup();
        ConsumerSettings {
            models,
            types,
            to_stages,
            lease_ms: self.lease_ms.unwrap_or(DEFAULT_LEASE_MS),
            max_deliveries: self.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES),
            backoff_ms: self.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS),
            on_dead_letter: self.on_dead_letter.unwrap_or(OnDeadLetter::Block),
        }
    }

    /// How this spec differs from an existing consumer's settings: the
    /// filter must be the same, and each setting unset or equal.
    pub fn differences(&self, existing: &ConsumerSettings) -> Vec<String> {
        let mine = self.settings();
        let mut out = Vec::new();
        if mine.models != existing.models
            || mine.types != existing.types
            || mine.to_stages != existing.to_stages
        {
            out.push(format!(
                "its filter is models {:?}, types {:?}, to_stages {:?}; this member asked for models {:?}, types {:?}, to_stages {:?}",
                existing.models,
                existing.types,
                existing.to_stages,
                mine.models,
                mine.types,
                mine.to_stages
            ));
        }
        let mut setting = |name: &str, given: Option<String>, have: String| {
            if let Some(g) = given
                && g != have
            {
                out.push(format!("its {name} is {have}; this member asked for {g}"));
            }
        };
        setting(
            "lease",
            self.lease_ms.map(|l| format!("{l} ms")),
            format!("{} ms", existing.lease_ms),
        );
        setting(
            "max_deliveries",
            self.max_deliveries.map(|m| m.to_string()),
            existing.max_deliveries.to_string(),
        );
        setting(
            "backoff",
            self.backoff_ms.map(|b| format!("{b} ms")),
            format!("{} ms", existing.backoff_ms),
        );
        setting(
            "on_dead_letter",
            self.on_dead_letter.map(|o| o.to_string()),
            existing.on_dead_letter.to_string(),
        );
        out
    }
}

impl ConsumerSettings {
    /// The events this consumer reads.
    pub fn filter(&self) -> EventFilter {
        EventFilter {
            models: self.models.clone(),
            kinds: self
                .types
                .iter()
                .filter_map(|t| EventKind::from_db(t))
                .collect(),
            to_stages: self
                .to_stages
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect(),
            ..EventFilter::default()
        }
    }

    /// The wait before delivery number `next` (2 for the first
    /// redelivery), ms: the backoff doubled per earlier redelivery, capped.
    pub fn backoff_before(&self, next: u32) -> i64 {
        let doublings = next.saturating_sub(2).min(20);
        self.backoff_ms
            .saturating_mul(1_i64 << doublings)
            .min(MAX_BACKOFF_MS)
    }
}

/// Checks a member id: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
pub fn parse_member(field: &str, raw: &str) -> Result<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Error::invalid(
            field,
            "must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
        ))
    }
}

/// The consumer delivery a write is made for (ConsumerFence).
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    /// The consumer.
    pub consumer: String,
    /// The member.
    pub member: String,
    /// The delivered event.
    pub sequence: u64,
    /// The delivery's epoch.
    pub epoch: u64,
}

/// A consumer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerRecord {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: ConsumerSettings,
    /// Events up to this sequence are not its business.
    pub start_sequence: u64,
    /// Events up to this sequence have been considered.
    pub scanned_sequence: u64,
    /// Who created it.
    pub creator: String,
    /// When, µs.
    pub create_time: i64,
}

/// A member as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRecord {
    /// Its id.
    pub member: String,
    /// The identity that joined as it.
    pub identity: String,
    /// Its current stream; a member that joins again supersedes the older.
    pub session: String,
    /// When it joined, µs.
    pub join_time: i64,
    /// When its lease ends, µs.
    pub expire_time: i64,
}

/// One model's place in a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSlot {
    /// The model.
    pub model: String,
    /// The member holding it.
    pub owner: Option<String>,
    /// Raised whenever it changes hands.
    pub epoch: u64,
    /// Every matching event up to here is done.
    pub acked: u64,
    /// The newest matching event seen.
    pub latest: u64,
    /// Matching events after `acked`.
    pub pending: u64,
    /// The event out and not acknowledged; 0 when none.
    pub inflight: u64,
    /// Deliveries of the in-flight event.
    pub deliveries: u32,
    /// When the in-flight event may be sent (again), µs; [`OUT_WITH_MEMBER`]
    /// while it is out.
    pub redeliver_time: i64,
    /// The last rejection's reason.
    pub last_error: String,
    /// Held by a parked dead letter.
    pub blocked: bool,
}

impl ModelSlot {
    /// A model seen for the first time.
    pub fn new(model: &str, start: u64) -> ModelSlot {
        ModelSlot {
            model: model.to_owned(),
            owner: None,
            epoch: 0,
            acked: start,
            latest: start,
            pending: 0,
            inflight: 0,
            deliveries: 0,
            redeliver_time: 0,
            last_error: String::new(),
            blocked: false,
        }
    }

    /// Gives the model to `member` (or to no one) under a new epoch; an
    /// event in flight is to be sent to the new holder at once.
    pub fn hand_to(&mut self, member: Option<&str>) {
        self.owner = member.map(str::to_owned);
        self.epoch += 1;
        if self.inflight != 0 {
            self.redeliver_time = 0;
        }
    }
}

/// A dead letter as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRecord {
    /// The consumer.
    pub consumer: String,
    /// The parked event's sequence.
    pub sequence: u64,
    /// Its model.
    pub model: String,
    /// Deliveries before it was parked.
    pub deliveries: u32,
    /// The last rejection's reason.
    pub reason: String,
    /// When it was parked, µs.
    pub park_time: i64,
    /// The DEAD_LETTERED event.
    pub event_sequence: u64,
    /// Where it is.
    pub state: DeadLetterState,
}

/// Reassigns `slots` among `live` members: the models of members that are
/// not live (or of none) go to the least loaded live member; then, while
/// one member holds two or more models than another, a model with no event
/// in flight moves from the first to the second. Sticky otherwise. Returns
/// the indexes of the slots that changed hands (each under a new epoch).
pub fn rebalance(live: &[String], slots: &mut [ModelSlot]) -> Vec<usize> {
    let mut changed = Vec::new();
    let mut load: BTreeMap<&str, usize> = live.iter().map(|m| (m.as_str(), 0)).collect();
    for s in slots.iter() {
        if let Some(o) = s.owner.as_deref()
            && let Some(n) = load.get_mut(o)
        {
            *n += 1;
        }
    }
    let least = |load: &BTreeMap<&str, usize>| -> Option<String> {
        load.iter()
            .min_by_key(|(m, n)| (**n, **m))
            .map(|(m, _)| (*m).to_owned())
    };
    for (i, s) in slots.iter_mut().enumerate() {
        let held = s.owner.as_deref().is_some_and(|o| load.contains_key(o));
        if held {
            continue;
        }
        let to = least(&load);
        if to.is_none() && s.owner.is_none() {
            continue;
        }
        if let Some(t) = &to {
            *load.get_mut(t.as_str()).expect("live") += 1;
        }
        s.hand_to(to.as_deref());
        changed.push(i);
    }
    let extremes = |load: &BTreeMap<&str, usize>| -> Option<(String, usize, String, usize)> {
        let (most, hi) = load
            .iter()
            .max_by_key(|(m, n)| (**n, std::cmp::Reverse(**m)))?;
        let (fewest, lo) = load.iter().min_by_key(|(m, n)| (**n, **m))?;
        Some(((*most).to_owned(), *hi, (*fewest).to_owned(), *lo))
    };
    while let Some((most, hi, fewest, lo)) = extremes(&load)
        && hi >= lo + 2
    {
        let Some(i) = slots
            .iter()
            .rposition(|s| s.owner.as_deref() == Some(most.as_str()) && s.inflight == 0)
        else {
            break;
        };
        slots[i].hand_to(Some(&fewest));
        *load.get_mut(most.as_str()).expect("live") -= 1;
        *load.get_mut(fewest.as_str()).expect("live") += 1;
        if !changed.contains(&i) {
            changed.push(i);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(owners: &[Option<&str>]) -> Vec<ModelSlot> {
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let mut s = ModelSlot::new(&format!("m{i}"), 0);
                s.owner = o.map(str::to_owned);
                s
            })
            .collect()
    }

    fn count(slots: &[ModelSlot], m: &str) -> usize {
        slots
            .iter()
            .filter(|s| s.owner.as_deref() == Some(m))
            .count()
    }

    #[test]
    fn new_models_spread_and_a_joiner_gets_its_share_of_idle_ones() {
        let live = vec!["a".to_owned()];
        let mut s = slots(&[None; 6]);
        assert_eq!(rebalance(&live, &mut s).len(), 6);
        assert_eq!(count(&s, "a"), 6);
        assert!(s.iter().all(|s| s.epoch == 1));
        // b joins; one of a's models has an event in flight and stays.
        s[5].inflight = 9;
        let live = vec!["a".to_owned(), "b".to_owned()];
        let moved = rebalance(&live, &mut s);
        assert_eq!(moved.len(), 3);
        assert_eq!((count(&s, "a"), count(&s, "b")), (3, 3));
        assert_eq!(s[5].owner.as_deref(), Some("a"));
        // Balanced: nothing moves again.
        assert!(rebalance(&live, &mut s).is_empty());
    }

    #[test]
    fn a_gone_members_models_move_even_in_flight_with_a_new_epoch() {
        let mut s = slots(&[Some("a"), Some("b"), Some("b"), Some("c")]);
        s[1].inflight = 7;
        s[1].redeliver_time = OUT_WITH_MEMBER;
        let live = vec!["a".to_owned(), "c".to_owned()];
        let moved = rebalance(&live, &mut s);
        assert_eq!(moved, vec![1, 2]);
        assert!(s.iter().all(|s| s.owner.as_deref() != Some("b")));
        assert_eq!(s[1].epoch, 1);
        assert_eq!(s[1].redeliver_time, 0, "to be sent to its new holder");
        // No member at all: models are held by no one.
        let moved = rebalance(&[], &mut s);
        assert_eq!(moved.len(), 4);
        assert!(s.iter().all(|s| s.owner.is_none()));
        assert!(rebalance(&[], &mut s).is_empty());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = ConsumerSpec {
            backoff_ms: Some(1000),
            ..Default::default()
        }
        .settings();
        assert_eq!(s.backoff_before(2), 1000);
        assert_eq!(s.backoff_before(3), 2000);
        assert_eq!(s.backoff_before(5), 8000);
        assert_eq!(s.backoff_before(40), MAX_BACKOFF_MS);
    }

    #[test]
    fn a_later_member_must_agree_with_the_consumer() {
        let first = ConsumerSpec {
            kinds: vec![EventKind::StageChanged],
            to_stages: vec![Stage::Production],
            max_deliveries: Some(3),
            ..Default::default()
        };
        let stored = first.settings();
        assert!(first.differences(&stored).is_empty());
        let unset = ConsumerSpec {
            max_deliveries: None,
            ..first.clone()
        };
        assert!(unset.differences(&stored).is_empty());
        let other = ConsumerSpec {
            max_deliveries: Some(4),
            to_stages: vec![],
            ..first
        };
        assert_eq!(other.differences(&stored).len(), 2);
        assert!(parse_member("m", "host-1:42").is_ok());
        assert!(parse_member("m", "").is_err());
        assert!(parse_member("m", "a b").is_err());
    }
}
