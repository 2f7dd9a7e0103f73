-- Transition requests: moves waiting for sign-off, and their history.
-- The id is MODEL:NUMBER, numbered per model under the model's lock.

CREATE TABLE transition_requests (
    model              TEXT NOT NULL,
    number             INTEGER NOT NULL,
    version            INTEGER NOT NULL,
    from_stage         TEXT NOT NULL,
    to_stage           TEXT NOT NULL,
    rollback           INTEGER NOT NULL,   -- 1 for a rollback waiting for approval
    requester          TEXT NOT NULL,
    comment            TEXT NOT NULL,
    gate_results       TEXT NOT NULL,      -- JSON array, as judged at request time
    approvals          TEXT NOT NULL,      -- JSON array of {approver, comment, approve_time}
    status             TEXT NOT NULL,      -- PENDING | APPROVED | REJECTED | CANCELLED | SUPERSEDED
    create_time        INTEGER NOT NULL,
    update_time        INTEGER NOT NULL,
    resolved_by        TEXT NOT NULL,
    resolution_comment TEXT NOT NULL,
    PRIMARY KEY (model, number),
    FOREIGN KEY (model, version) REFERENCES versions(model, version)
) STRICT;
CREATE INDEX transition_requests_by_status ON transition_requests(status, model, number);
CREATE INDEX transition_requests_by_version ON transition_requests(model, version, status);
