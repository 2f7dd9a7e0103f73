-- The registry's tables. Every state change also appends to `events` in the
-- same transaction; `events` is append-only (enforced by triggers below).

CREATE TABLE models (
    name         TEXT PRIMARY KEY NOT NULL,
    description  TEXT NOT NULL,
    tags         TEXT NOT NULL,           -- JSON object, for reading
    policy       BLOB,                    -- reserved for the governance release
    revision     INTEGER NOT NULL,        -- the etag
    latest_version INTEGER NOT NULL DEFAULT 0,
    created_by   TEXT NOT NULL,
    create_time  INTEGER NOT NULL,        -- µs since the Unix epoch
    update_time  INTEGER NOT NULL
) STRICT;

-- The same tags as rows, so ListModels can filter by tag with an index.
CREATE TABLE model_tags (
    model TEXT NOT NULL REFERENCES models(name),
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (model, key)
) STRICT;
CREATE INDEX model_tags_by_key_value ON model_tags(key, value, model);

CREATE TABLE versions (
    model            TEXT NOT NULL REFERENCES models(name),
    version          INTEGER NOT NULL CHECK (version >= 1),
    artifact_uri     TEXT NOT NULL CHECK (artifact_uri <> ''),
    artifact_digest  TEXT NOT NULL,
    source           TEXT NOT NULL,       -- JSON object
    training_metrics TEXT NOT NULL,       -- JSON object
    tags             TEXT NOT NULL,       -- JSON object
    description      TEXT NOT NULL,
    stage            TEXT NOT NULL CHECK (stage IN ('NONE', 'STAGING', 'PRODUCTION', 'ARCHIVED')),
    revision         INTEGER NOT NULL,
    created_by       TEXT NOT NULL,
    create_time      INTEGER NOT NULL,
    update_time      INTEGER NOT NULL,
    stage_update_time INTEGER NOT NULL,
    PRIMARY KEY (model, version)
) STRICT;
-- At most one production version per model, whatever the code does.
CREATE UNIQUE INDEX one_production_version ON versions(model) WHERE stage = 'PRODUCTION';
CREATE INDEX versions_by_stage ON versions(model, stage, version);

CREATE TABLE aliases (
    model   TEXT NOT NULL,
    alias   TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
) STRICT;
CREATE INDEX aliases_by_version ON aliases(model, version);

-- AIP-155 request ids: a retry returns the original result.
CREATE TABLE idempotency (
    method      TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (method, request_id)
) STRICT;

CREATE TABLE events (
    sequence    INTEGER PRIMARY KEY NOT NULL,  -- gap-free: assigned by the one writer
    type        TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    from_stage  TEXT,
    to_stage    TEXT,
    cause       TEXT,
    actor       TEXT NOT NULL,
    comment     TEXT NOT NULL,
    occur_time  INTEGER NOT NULL,
    details     TEXT NOT NULL,                 -- JSON
    transition_request_id TEXT NOT NULL,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_model ON events(model, version, sequence);
CREATE INDEX events_by_type ON events(type, sequence);

CREATE TRIGGER events_are_append_only_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only');
END;
CREATE TRIGGER events_are_append_only_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the event log is append-only');
END;
