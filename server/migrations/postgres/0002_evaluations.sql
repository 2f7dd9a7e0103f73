-- Standard evaluation sets and the evaluations attached to versions.

CREATE TABLE evaluation_sets (
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    uri         TEXT NOT NULL,
    digest      TEXT NOT NULL,
    metrics     TEXT NOT NULL,   -- JSON array of {name, higher_is_better}, in definition order
    description TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

-- One evaluation per (version, set name@version, evaluator version).
CREATE TABLE evaluations (
    model             TEXT NOT NULL,
    version           BIGINT NOT NULL,
    set_name          TEXT NOT NULL,
    set_version       TEXT NOT NULL,
    evaluator_version TEXT NOT NULL,
    metrics           TEXT NOT NULL,   -- JSON object metric → value
    report_uri        TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    create_time       BIGINT NOT NULL,
    PRIMARY KEY (model, version, set_name, set_version, evaluator_version),
    FOREIGN KEY (model, version) REFERENCES versions(model, version),
    FOREIGN KEY (set_name, set_version) REFERENCES evaluation_sets(name, version)
);
CREATE INDEX evaluations_by_set ON evaluations(model, set_name, set_version, version);
