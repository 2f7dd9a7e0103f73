-- Automation: deployment reports, live metrics and the live monitor's breach
-- episodes; idempotent retries that answer with what they first answered.

-- The latest report per version and environment (every report is also a
-- DEPLOYMENT_REPORTED event).
CREATE TABLE deployments (
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    environment TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('DEPLOYING', 'SUCCEEDED', 'FAILED', 'UNDEPLOYED')),
    endpoint    TEXT NOT NULL,
    message     TEXT NOT NULL,
    reported_by TEXT NOT NULL,
    report_time INTEGER NOT NULL,          -- µs since the Unix epoch
    PRIMARY KEY (model, version, environment),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
) STRICT;

-- Observations of live metrics. No event per observation: they would flood
-- the log; the live monitor reads them by this key.
CREATE TABLE live_metrics (
    model        TEXT NOT NULL,
    version      INTEGER NOT NULL,
    metric       TEXT NOT NULL,
    observe_time INTEGER NOT NULL,         -- µs since the Unix epoch
    value        REAL NOT NULL,
    PRIMARY KEY (model, version, metric, observe_time),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
) STRICT;

-- Breach episodes already reported, named by when their bad run began, so
-- one episode gives one LIVE_METRIC_BREACH event however often it is checked.
CREATE TABLE live_metric_breaches (
    model       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    metric      TEXT NOT NULL,
    bad_since   INTEGER NOT NULL,          -- µs since the Unix epoch
    report_time INTEGER NOT NULL,          -- the policy tick that reported it
    PRIMARY KEY (model, version, metric, bad_since)
) STRICT;

-- The first answer of a request (JSON) for calls whose retry must return it
-- even after later calls changed the resource.
ALTER TABLE idempotency ADD COLUMN response TEXT;
