-- Durable consumers: named subscriptions shared by workers, with each
-- model's acknowledged position, the live members and their assignments,
-- and the dead letters, next to the event log they read.

-- spec is JSON: models, types, to_stages, lease_ms, max_deliveries,
-- backoff_ms, on_dead_letter. scanned_sequence: every event up to it has
-- been considered (its model has a consumer_models row if it matched).
CREATE TABLE consumers (
    name             TEXT PRIMARY KEY NOT NULL,
    spec             TEXT NOT NULL,
    start_sequence   INTEGER NOT NULL,
    scanned_sequence INTEGER NOT NULL,
    creator          TEXT NOT NULL,
    create_time      INTEGER NOT NULL      -- µs since the Unix epoch
) STRICT;

-- Live members; session names the member's current stream (a member that
-- reconnects supersedes its older stream). A row whose expire_time has passed is a member that stopped
-- renewing, removed (and its models reassigned) by the next rebalance.
CREATE TABLE consumer_members (
    consumer    TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    member      TEXT NOT NULL,
    identity    TEXT NOT NULL,
    session     TEXT NOT NULL,
    join_time   INTEGER NOT NULL,
    expire_time INTEGER NOT NULL,
    PRIMARY KEY (consumer, member)
) STRICT;

-- One row per model the consumer has seen a matching event of. owner is the
-- member holding it (NULL: none); epoch rises whenever it changes hands.
-- inflight_sequence is the event delivered and not acknowledged (0: none);
-- redeliver_time is when it may be sent (again): MAX_I64 while it is out.
CREATE TABLE consumer_models (
    consumer          TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    model             TEXT NOT NULL,
    owner             TEXT,
    epoch             INTEGER NOT NULL,
    acked_sequence    INTEGER NOT NULL,
    latest_sequence   INTEGER NOT NULL,
    pending           INTEGER NOT NULL,
    inflight_sequence INTEGER NOT NULL,
    deliveries        INTEGER NOT NULL,
    redeliver_time    INTEGER NOT NULL,
    last_error        TEXT NOT NULL,
    blocked           INTEGER NOT NULL,    -- 0 or 1 (a bool)
    PRIMARY KEY (consumer, model)
) STRICT;
CREATE INDEX consumer_models_by_owner ON consumer_models(consumer, owner);

-- Events a consumer gave up on (state PARKED), retried (RETRYING) or
-- acknowledged after a retry (RESOLVED).
CREATE TABLE dead_letters (
    consumer       TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    sequence       INTEGER NOT NULL,
    model          TEXT NOT NULL,
    deliveries     INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    park_time      INTEGER NOT NULL,
    event_sequence INTEGER NOT NULL,       -- the DEAD_LETTERED event
    state          TEXT NOT NULL CHECK (state IN ('PARKED', 'RETRYING', 'RESOLVED')),
    PRIMARY KEY (consumer, sequence)
) STRICT;
