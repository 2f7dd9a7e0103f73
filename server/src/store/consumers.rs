//! The statements of durable consumers, written once for both engines and
//! run on whatever executor the caller has (a write transaction's
//! connection, or the read pool): load a consumer's state, save what a use
//! case changed in it, and page through consumers and dead letters.
//!
//! It must not decide anything: which member holds which model, and when an
//! event is parked, are [`crate::app::consumers`]'s.

use std::marker::PhantomData;
use std::sync::LazyLock;

use sqlx::{Executor, FromRow, IntoArguments};

use crate::domain::{ConsumerRecord, DeadLetterRecord, DeadLetterState, MemberRecord, ModelSlot};
use crate::error::{Error, Result};
use crate::store::sql::{Column, Engine, Param, db_err, json_err};

// The statements' texts, each named after what it does: the sqlx
// statements below and the SQLite writer's ([`super::lite`]) run the same
// text.
pub(super) const LOAD_MEMBERS: &str =
    "SELECT member, identity, session, join_time, expire_time FROM consumer_members
             WHERE consumer = $1 ORDER BY member";
pub(super) const COUNT_PARKED: &str =
    "SELECT COUNT(*) FROM dead_letters WHERE consumer = $1 AND state = 'PARKED'";
pub(super) const INSERT_CONSUMER: &str =
    "INSERT INTO consumers (name, spec, start_sequence, scanned_sequence, creator, create_time)
                 VALUES ($1, $2, $3, $4, $5, $6)";
pub(super) const SET_SCANNED: &str = "UPDATE consumers SET scanned_sequence = $2 WHERE name = $1";
pub(super) const REMOVE_MEMBER: &str =
    "DELETE FROM consumer_members WHERE consumer = $1 AND member = $2";
pub(super) const UPSERT_MEMBER: &str = "INSERT INTO consumer_members (consumer, member, identity, session, join_time, expire_time)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (consumer, member) DO UPDATE SET identity = excluded.identity,
                     session = excluded.session, join_time = excluded.join_time, expire_time = excluded.expire_time";
pub(super) const UPSERT_DEAD_LETTER: &str = "INSERT INTO dead_letters (consumer, sequence, model, deliveries, reason, park_time, event_sequence, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (consumer, sequence) DO UPDATE SET deliveries = excluded.deliveries,
                     reason = excluded.reason, park_time = excluded.park_time,
                     event_sequence = excluded.event_sequence, state = excluded.state";
pub(super) const UPSERT_SLOT: &str =
    "INSERT INTO consumer_models (consumer, model, owner, epoch, acked_sequence, latest_sequence,
                 pending, inflight_sequence, deliveries, redeliver_time, last_error, blocked)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (consumer, model) DO UPDATE SET owner = excluded.owner,
                 epoch = excluded.epoch, acked_sequence = excluded.acked_sequence,
                 latest_sequence = excluded.latest_sequence, pending = excluded.pending,
                 inflight_sequence = excluded.inflight_sequence, deliveries = excluded.deliveries,
                 redeliver_time = excluded.redeliver_time, last_error = excluded.last_error,
                 blocked = excluded.blocked";
pub(super) const DELETE_CONSUMER: &str =
    "DELETE FROM consumers WHERE name = $1 RETURNING create_time";

/// Which model places a load reads: a use case reads only the ones it may
/// change, so an acknowledgement costs the same with 10 models or 10,000.
#[derive(Debug, Clone, Copy)]
pub enum Slots<'a> {
    /// None: the consumer and its members only.
    None,
    /// Every model's.
    All,
    /// The models held by this member.
    HeldBy(&'a str),
    /// This model's.
    Of(&'a str),
}

/// A consumer with its members and the model places asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    /// The consumer.
    pub record: ConsumerRecord,
    /// Its members, live or not yet removed, by id.
    pub members: Vec<MemberRecord>,
    /// The model places asked for ([`Slots`]), by model.
    pub slots: Vec<ModelSlot>,
    /// Dead letters being delivered again, by sequence.
    pub retrying: Vec<DeadLetterRecord>,
    /// How many dead letters are parked.
    pub parked: u64,
}

/// What a use case changed in a consumer, to be written in its transaction.
#[derive(Debug, Clone, Default)]
pub struct ConsumerChanges {
    /// A consumer to create.
    pub create: Option<ConsumerRecord>,
    /// The new scanned sequence, when it moved.
    pub scanned: Option<u64>,
    /// Members joined or renewed.
    pub members: Vec<MemberRecord>,
    /// Members removed.
    pub removed: Vec<String>,
    /// Model places created or changed.
    pub slots: Vec<ModelSlot>,
    /// Dead letters created or changed.
    pub dead_letters: Vec<DeadLetterRecord>,
}

impl ConsumerChanges {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.create.is_none()
            && self.scanned.is_none()
            && self.members.is_empty()
            && self.removed.is_empty()
            && self.slots.is_empty()
            && self.dead_letters.is_empty()
    }
}

#[derive(FromRow, serde::Deserialize)]
pub struct ConsumerRow {
    name: String,
    spec: String,
    start_sequence: i64,
    scanned_sequence: i64,
    creator: String,
    create_time: i64,
}

impl TryFrom<ConsumerRow> for ConsumerRecord {
    type Error = Error;
    fn try_from(r: ConsumerRow) -> Result<ConsumerRecord> {
        Ok(ConsumerRecord {
            name: r.name,
            settings: serde_json::from_str(&r.spec).map_err(json_err)?,
            start_sequence: r.start_sequence as u64,
            scanned_sequence: r.scanned_sequence as u64,
            creator: r.creator,
            create_time: r.create_time,
        })
    }
}

#[derive(FromRow, serde::Deserialize)]
pub struct MemberRow {
    member: String,
    identity: String,
    session: String,
    join_time: i64,
    expire_time: i64,
}

impl From<MemberRow> for MemberRecord {
    fn from(r: MemberRow) -> MemberRecord {
        MemberRecord {
            member: r.member,
            identity: r.identity,
            session: r.session,
            join_time: r.join_time,
            expire_time: r.expire_time,
        }
    }
}

#[derive(FromRow, serde::Deserialize)]
pub struct SlotRow {
    model: String,
    owner: Option<String>,
    epoch: i64,
    acked_sequence: i64,
    latest_sequence: i64,
    pending: i64,
    inflight_sequence: i64,
    deliveries: i64,
    redeliver_time: i64,
    last_error: String,
    blocked: bool,
}

impl From<SlotRow> for ModelSlot {
    fn from(r: SlotRow) -> ModelSlot {
        ModelSlot {
            model: r.model,
            owner: r.owner,
            epoch: r.epoch as u64,
            acked: r.acked_sequence as u64,
            latest: r.latest_sequence as u64,
            pending: r.pending as u64,
            inflight: r.inflight_sequence as u64,
            deliveries: r.deliveries as u32,
            redeliver_time: r.redeliver_time,
            last_error: r.last_error,
            blocked: r.blocked,
        }
    }
}

#[derive(FromRow, serde::Deserialize)]
pub struct DeadLetterRow {
    consumer: String,
    sequence: i64,
    model: String,
    deliveries: i64,
    reason: String,
    park_time: i64,
    event_sequence: i64,
    state: String,
}

impl TryFrom<DeadLetterRow> for DeadLetterRecord {
    type Error = Error;
    fn try_from(r: DeadLetterRow) -> Result<DeadLetterRecord> {
        Ok(DeadLetterRecord {
            consumer: r.consumer,
            sequence: r.sequence as u64,
            model: r.model,
            deliveries: r.deliveries as u32,
            reason: r.reason,
            park_time: r.park_time,
            event_sequence: r.event_sequence as u64,
            state: r
                .state
                .parse::<DeadLetterState>()
                .map_err(|_| Error::Internal(format!("unknown dead letter state {}", r.state)))?,
        })
    }
}

const CONSUMER_COLUMNS: &str = "name, spec, start_sequence, scanned_sequence, creator, create_time";
const SLOT_COLUMNS: &str = "model, owner, epoch, acked_sequence, latest_sequence, pending, \
     inflight_sequence, deliveries, redeliver_time, last_error, blocked";
const DEAD_LETTER_COLUMNS: &str =
    "consumer, sequence, model, deliveries, reason, park_time, event_sequence, state";

/// The tables that hold a consumer's state besides `consumers`, in the
/// order they are emptied when it is deleted.
pub(super) const CONSUMER_TABLES: [&str; 3] =
    ["dead_letters", "consumer_models", "consumer_members"];

/// The statements, generic over the engine.
pub struct ConsumerSql<DB>(PhantomData<DB>);

impl<DB> ConsumerSql<DB>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    i64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    ConsumerRow: for<'r> FromRow<'r, DB::Row>,
    MemberRow: for<'r> FromRow<'r, DB::Row>,
    SlotRow: for<'r> FromRow<'r, DB::Row>,
    DeadLetterRow: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    /// The consumer named `name`, with its members, the model places
    /// `which` asks for, its dead letters being retried and the count of
    /// parked ones.
    pub async fn load(
        conn: &mut DB::Connection,
        name: &str,
        which: Slots<'_>,
    ) -> Result<Option<ConsumerState>> {
        let sql = load_consumer_sql();
        let Some(row): Option<ConsumerRow> = sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let record = ConsumerRecord::try_from(row)?;
        let members: Vec<MemberRow> = sqlx::query_as(LOAD_MEMBERS)
            .bind(name)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        let slots: Vec<SlotRow> = match slots_sql(which) {
            None => vec![],
            Some((sql, key)) => sqlx::query_as(sql)
                .bind(name)
                .bind(key)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?,
        };
        let retrying = Self::dead_letters_in(conn, name, "RETRYING").await?;
        let (parked,): (i64,) = sqlx::query_as(COUNT_PARKED)
            .bind(name)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(Some(ConsumerState {
            record,
            members: members.into_iter().map(MemberRecord::from).collect(),
            slots: slots.into_iter().map(ModelSlot::from).collect(),
            retrying,
            parked: parked as u64,
        }))
    }

    async fn dead_letters_in(
        conn: &mut DB::Connection,
        name: &str,
        state: &str,
    ) -> Result<Vec<DeadLetterRecord>> {
        let sql = dead_letters_in_sql();
        let rows: Vec<DeadLetterRow> = sqlx::query_as(&sql)
            .bind(name)
            .bind(state)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(DeadLetterRecord::try_from).collect()
    }

    /// One model's place.
    pub async fn slot(
        conn: &mut DB::Connection,
        name: &str,
        model: &str,
    ) -> Result<Option<ModelSlot>> {
        let sql = slot_sql();
        let row: Option<SlotRow> = sqlx::query_as(&sql)
            .bind(name)
            .bind(model)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(row.map(ModelSlot::from))
    }

    /// One dead letter.
    pub async fn dead_letter(
        conn: &mut DB::Connection,
        name: &str,
        sequence: u64,
    ) -> Result<Option<DeadLetterRecord>> {
        let sql = dead_letter_sql();
        let row: Option<DeadLetterRow> = sqlx::query_as(&sql)
            .bind(name)
            .bind(sequence as i64)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        row.map(DeadLetterRecord::try_from).transpose()
    }

    /// Up to `limit` consumers after `after`, by name.
    pub async fn list(
        conn: &mut DB::Connection,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ConsumerRecord>> {
        let sql = format!(
            "SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name > $1 ORDER BY name LIMIT $2"
        );
        let rows: Vec<ConsumerRow> = sqlx::query_as(&sql)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(ConsumerRecord::try_from).collect()
    }

    /// Up to `limit` dead letters of `name` after sequence `after`.
    pub async fn dead_letters(
        conn: &mut DB::Connection,
        name: &str,
        include_resolved: bool,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let sql = format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = $1 AND sequence > $2
             AND ($3 OR state <> 'RESOLVED') ORDER BY sequence LIMIT $4"
        );
        let rows: Vec<DeadLetterRow> = sqlx::query_as(&sql)
            .bind(name)
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(include_resolved)
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(DeadLetterRecord::try_from).collect()
    }

    /// Writes `c` (consumer `name`).
    pub async fn save(conn: &mut DB::Connection, name: &str, c: &ConsumerChanges) -> Result<()> {
        if let Some(r) = &c.create {
            let spec = serde_json::to_string(&r.settings).map_err(json_err)?;
            sqlx::query(INSERT_CONSUMER)
                .bind(r.name.as_str())
                .bind(spec.as_str())
                .bind(r.start_sequence as i64)
                .bind(r.scanned_sequence as i64)
                .bind(r.creator.as_str())
                .bind(r.create_time)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        if let Some(s) = c.scanned {
            sqlx::query(SET_SCANNED)
                .bind(name)
                .bind(s as i64)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        for m in &c.removed {
            sqlx::query(REMOVE_MEMBER)
                .bind(name)
                .bind(m.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        for m in &c.members {
            sqlx::query(UPSERT_MEMBER)
                .bind(name)
                .bind(m.member.as_str())
                .bind(m.identity.as_str())
                .bind(m.session.as_str())
                .bind(m.join_time)
                .bind(m.expire_time)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        for s in &c.slots {
            Self::save_slot(conn, name, s).await?;
        }
        for d in &c.dead_letters {
            sqlx::query(UPSERT_DEAD_LETTER)
                .bind(name)
                .bind(d.sequence as i64)
                .bind(d.model.as_str())
                .bind(i64::from(d.deliveries))
                .bind(d.reason.as_str())
                .bind(d.park_time)
                .bind(d.event_sequence as i64)
                .bind(d.state.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn save_slot(conn: &mut DB::Connection, name: &str, s: &ModelSlot) -> Result<()> {
        sqlx::query(UPSERT_SLOT)
            .bind(name)
            .bind(s.model.as_str())
            .bind(s.owner.as_deref())
            .bind(s.epoch as i64)
            .bind(s.acked as i64)
            .bind(s.latest as i64)
            .bind(s.pending as i64)
            .bind(s.inflight as i64)
            .bind(i64::from(s.deliveries))
            .bind(s.redeliver_time)
            .bind(s.last_error.as_str())
            .bind(s.blocked)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Deletes consumer `name` and all its state.
    pub async fn delete(conn: &mut DB::Connection, name: &str) -> Result<bool> {
        for table in CONSUMER_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE consumer = $1"))
                .bind(name)
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        let found: Option<(i64,)> = sqlx::query_as(DELETE_CONSUMER)
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }
}

/// A consumer by name.
/// Its text is shared with [`super::lite`].
pub(super) fn load_consumer_sql() -> String {
    format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE name = $1")
}

/// A consumer's dead letters in one state, by sequence.
/// Its text is shared with [`super::lite`].
pub(super) fn dead_letters_in_sql() -> String {
    format!(
        "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = $1 AND state = $2 ORDER BY sequence"
    )
}

/// One model's place in a consumer.
/// Its text is shared with [`super::lite`].
pub(super) fn slot_sql() -> String {
    format!("SELECT {SLOT_COLUMNS} FROM consumer_models WHERE consumer = $1 AND model = $2")
}

/// One dead letter by consumer and sequence.
/// Its text is shared with [`super::lite`].
pub(super) fn dead_letter_sql() -> String {
    format!("SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE consumer = $1 AND sequence = $2")
}

/// The select of the model places `which` asks for, with its second
/// parameter (the first is the consumer), or `None` when it asks for none.
pub(super) fn slots_sql(which: Slots<'_>) -> Option<(&'static str, &str)> {
    static TEXTS: LazyLock<[String; 3]> = LazyLock::new(|| {
        ["AND $2 = ''", "AND owner = $2", "AND model = $2"].map(|clause| {
            format!("SELECT {SLOT_COLUMNS} FROM consumer_models WHERE consumer = $1 {clause} ORDER BY model")
        })
    });
    let (text, key) = match which {
        Slots::None => return None,
        Slots::All => (0, ""),
        Slots::HeldBy(member) => (1, member),
        Slots::Of(model) => (2, model),
    };
    Some((TEXTS[text].as_str(), key))
}
