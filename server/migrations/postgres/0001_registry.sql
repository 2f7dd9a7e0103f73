-- The registry's tables on PostgreSQL: the same shape as the SQLite schema,
-- so one set of statements serves both. Every state change also appends to
-- `events` in the same transaction; `events` is append-only (triggers below).

CREATE TABLE models (
    name           TEXT PRIMARY KEY,
    description    TEXT NOT NULL,
    tags           TEXT NOT NULL,          -- JSON object, for reading
    policy         BYTEA,                  -- reserved for the governance release
    revision       BIGINT NOT NULL,        -- the etag
    latest_version BIGINT NOT NULL DEFAULT 0,
    created_by     TEXT NOT NULL,
    create_time    BIGINT NOT NULL,        -- µs since the Unix epoch
    update_time    BIGINT NOT NULL
);

CREATE TABLE model_tags (
    model TEXT NOT NULL REFERENCES models(name),
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model, key)
);
CREATE INDEX model_tags_by_key_value ON model_tags(key, value, model);

CREATE TABLE versions (
    model             TEXT NOT NULL REFERENCES models(name),
    version           BIGINT NOT NULL CHECK (version >= 1),
    artifact_uri      TEXT NOT NULL CHECK (artifact_uri <> ''),
    artifact_digest   TEXT NOT NULL,
    source            TEXT NOT NULL,
    training_metrics  TEXT NOT NULL,
    tags              TEXT NOT NULL,
    description       TEXT NOT NULL,
    stage             TEXT NOT NULL CHECK (stage IN ('NONE', 'STAGING', 'PRODUCTION', 'ARCHIVED')),
    revision          BIGINT NOT NULL,
    created_by        TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    update_time       BIGINT NOT NULL,
    stage_update_time BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE UNIQUE INDEX one_production_version ON versions(model) WHERE stage = 'PRODUCTION';
CREATE INDEX versions_by_stage ON versions(model, stage, version);

CREATE TABLE aliases (
    model   TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
);
CREATE INDEX aliases_by_version ON aliases(model, version);

CREATE TABLE idempotency (
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (method, request_id)
);

CREATE TABLE events (
    sequence    BIGINT PRIMARY KEY,   -- assigned under the event_log_head row lock
    type        TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    from_stage  TEXT,
    to_stage    TEXT,
    cause       TEXT,
    actor       TEXT NOT NULL,
    comment     TEXT NOT NULL,
    occur_time  BIGINT NOT NULL,
    details     TEXT NOT NULL,
    transition_request_id TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
);
CREATE INDEX events_by_model ON events(model, version, sequence);
CREATE INDEX events_by_actor ON events(actor, sequence);
CREATE INDEX events_by_type ON events(type, sequence);

-- The end of the log. A writer locks this row (SELECT … FOR UPDATE) when it
-- appends and holds it until commit, so sequence N+1 can only be assigned
-- after N has committed: no reader ever sees a gap.
CREATE TABLE event_log_head (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence BIGINT NOT NULL,
    last_hash     TEXT NOT NULL
);
INSERT INTO event_log_head (id, last_sequence, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only';
END;
$$;
CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
