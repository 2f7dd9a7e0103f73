-- Durable consumers: named subscriptions shared by workers, with each
-- model's acknowledged position, the live members and their assignments,
-- and the dead letters, next to the event log they read.

-- spec is JSON: models, types, to_stages, lease_ms, max_deliveries,
-- backoff_ms, on_dead_letter. scanned_sequence: every event up to it has
-- been considered (its model has a consumer_models row if it matched).
CREATE TABLE consumers (
    name             TEXT PRIMARY KEY NOT NULL,
    spec             TEXT NOT NULL,
    start_sequence   BIGINT NOT NULL,
    scanned_sequence BIGINT NOT NULL,
    creator          TEXT NOT NULL,
    create_time      BIGINT NOT NULL      -- µs since the Unix epoch
);

-- Live members; session names the member's current stream (a member that
-- reconnects supersedes its older stream). A row whose expire_time has passed is a member that stopped
-- renewing, removed (and its models reassigned) by the next rebalance.
CREATE TABLE consumer_members (
    consumer    TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    member      TEXT NOT NULL,
    identity    TEXT NOT NULL,
    session     TEXT NOT NULL,
    join_time   BIGINT NOT NULL,
    expire_time BIGINT NOT NULL,
    PRIMARY KEY (consumer, member)
);

-- One row per model the consumer has seen a matching event of. owner is the
-- member holding it (NULL: none); epoch rises whenever it changes hands.
-- inflight_sequence is the event delivered and not acknowledged (0: none);
-- redeliver_time is when it may be sent (again): MAX_I64 while it is out.
CREATE TABLE consumer_models (
    consumer          TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    model             TEXT NOT NULL,
    owner             TEXT,
    epoch             BIGINT NOT NULL,
    acked_sequence    BIGINT NOT NULL,
    latest_sequence   BIGINT NOT NULL,
    pending           BIGINT NOT NULL,
    inflight_sequence BIGINT NOT NULL,
    deliveries        BIGINT NOT NULL,
    redeliver_time    BIGINT NOT NULL,
    last_error        TEXT NOT NULL,
    blocked           BOOLEAN NOT NULL,
    PRIMARY KEY (consumer, model)
);
CREATE INDEX consumer_models_by_owner ON consumer_models(consumer, owner);

-- Events a consumer gave up on (state PARKED), retried (RETRYING) or
-- acknowledged after a retry (RESOLVED).
CREATE TABLE dead_letters (
    consumer       TEXT NOT NULL REFERENCES consumers(name) ON DELETE CASCADE,
    sequence       BIGINT NOT NULL,
    model          TEXT NOT NULL,
    deliveries     BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    park_time      BIGINT NOT NULL,
    event_sequence BIGINT NOT NULL,       -- the DEAD_LETTERED event
    state          TEXT NOT NULL CHECK (state IN ('PARKED', 'RETRYING', 'RESOLVED')),
    PRIMARY KEY (consumer, sequence)
);
