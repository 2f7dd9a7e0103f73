"""`modelreg import mlflow` against a real `mlflow server` (SQLite backend)
filled through the unchanged MLflow client, into a real modelreg-server,
driven through the real `modelreg` CLI: every field arrives, stages arrive
with cause IMPORT and the importing admin as actor, a re-run writes nothing,
a later run copies only what is new, `--model` narrows the copy, and a name
modelreg refuses is reported while the rest is imported.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime

import pytest
from mlflow import MlflowClient

from conftest import Registry

#: What the MLflow registry of the main test holds: model → (description,
#: tags, aliases, versions), each version (source, run_link, tags,
#: description, stage). A source of None means `runs:/<run>/model`.
MODELS = {
    "fraud-detector": (
        "Flags card fraud",
        {"team": "risk", "tier": "gold"},
        {"champion": 2, "challenger": 3},
        [
            ("s3://models/fraud/1", "http://ci.example/runs/1", {"framework": "sklearn"}, "the first try", "Archived"),
            (None, "", {}, "trained on 2026 data", "Production"),
            ("s3://models/fraud/3", "", {"candidate": "yes"}, "", "Staging"),
            ("s3://models/fraud/4", "", {}, "", "None"),
        ],
    ),
    "churn": (
        "",
        {},
        {"prod": 1},
        [
            ("s3://models/churn/1", "", {}, "", "Production"),
            ("s3://models/churn/2", "", {}, "", "None"),
        ],
    ),
    "search.ranker": (
        "Ranks results",
        {"owner": "search"},
        {},
        [("s3://models/ranker/1", "", {}, "v1", "Staging")],
    ),
}


def mlflow_client(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def fill(url: str, models: dict = MODELS) -> dict[tuple[str, int], dict]:
    """Creates `models` in MLflow; returns (model, version) → what MLflow holds."""
    client = mlflow_client(url)
    run = client.create_run("0")
    held = {}
    for name, (description, tags, aliases, versions) in models.items():
        client.create_registered_model(name, tags=tags, description=description)
        for source, run_link, vtags, vdescription, stage in versions:
            mv = client.create_model_version(
                name,
                source or f"runs:/{run.info.run_id}/model",
                run_id=run.info.run_id,
                tags=vtags,
                run_link=run_link or None,
                description=vdescription or None,
            )
            if stage != "None":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # stages are deprecated in MLflow 3
                    client.transition_model_version_stage(name, mv.version, stage)
            mv = client.get_model_version(name, mv.version)
            held[(name, int(mv.version))] = {
                "artifact_uri": f"{run.info.artifact_uri}/model" if source is None else source,
                "run_id": mv.run_id,
                "run_link": mv.run_link or "",
                "tags": dict(mv.tags),
                "description": mv.description or "",
                "stage": stage,
                "creation_timestamp": mv.creation_timestamp,
            }
        for alias, version in aliases.items():
            client.set_registered_model_alias(name, alias, str(version))
    return held


def import_json(registry: Registry, identity: str, *args: str):
    """Runs `modelreg import mlflow ARGS --json` as `identity`; (exit status, summary)."""
    done = registry.cli(identity, "--json", "import", "mlflow", *args, check=False)
    summary = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, summary, done.stderr


def millis(rfc3339: str) -> int:
    return round(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


def events(registry: Registry, *args: str) -> list[dict]:
    out = registry.cli_json("root", "events", *args)
    return out if isinstance(out, list) else [out]


def last_sequence(registry: Registry) -> int:
    return max(int(e["sequence"]) for e in events(registry))


def test_import_copies_every_field_then_reruns_write_nothing(registry: Registry, mlflow_server: str) -> None:
    """Every model, version, stage and alias arrives with its fields; a re-run
    is all skipped and appends no event; a version added later arrives alone."""
    # Arrange
    held = fill(mlflow_server)

    # Act
    status, summary, stderr = import_json(registry, "root", "--from", mlflow_server)

    # Assert: the summary
    assert status == 0, stderr
    staged = sum(1 for v in held.values() if v["stage"] != "None")
    assert summary["imported"] == {"models": 3, "versions": len(held), "stages": staged, "aliases": 3}
    assert summary["skipped"] == {"models": 0, "versions": 0, "stages": 0, "aliases": 0}
    assert summary["refused"] == [] and summary["renumbered"] == []

    # Assert: models
    for name, (description, tags, aliases, _) in MODELS.items():
        model = registry.cli_json("root", "model", "get", name)
        assert model.get("description", "") == description
        assert model.get("tags", {}) == tags
        assert {k: int(v) for k, v in model.get("aliases", {}).items()} == aliases

    # Assert: versions, with MLflow's numbers
    for (name, number), want in held.items():
        got = registry.cli_json("root", "version", "get", name, str(number))
        source = got["source"]
        assert int(got["version"]) == number
        assert got["artifact_uri"] == want["artifact_uri"]
        assert source.get("run_id", "") == want["run_id"]
        assert source.get("pipeline_url", "") == want["run_link"]
        assert source["imported_from"] == f"mlflow:{mlflow_server}/{name}/{number}"
        assert millis(source["original_create_time"]) == want["creation_timestamp"]
        assert got.get("tags", {}) == want["tags"]
        assert got.get("description", "") == want["description"]
        assert got["stage"] == f"STAGE_{want['stage'].upper()}"

    # Assert: each stage arrived as STAGE_CHANGED with cause IMPORT, by root
    changes = events(registry, "--type", "stage_changed")
    imported_moves = {(e["model"], int(e["version"])): e for e in changes}
    for (name, number), want in held.items():
        if want["stage"] == "None":
            assert (name, number) not in imported_moves
            continue
        e = imported_moves[(name, number)]
        assert e["cause"] == "STAGE_CHANGE_CAUSE_IMPORT", e
        assert e["actor"] == "root"
        assert e["to_stage"] == f"STAGE_{want['stage'].upper()}"
        assert e["from_stage"] == "STAGE_NONE"
    assert not events(registry, "--type", "transition_requested")

    # Act: the same import again
    before = last_sequence(registry)
    status, again, stderr = import_json(registry, "root", "--from", mlflow_server)

    # Assert: everything skipped, nothing appended
    assert status == 0, stderr
    assert again["imported"] == {"models": 0, "versions": 0, "stages": 0, "aliases": 0}
    assert again["skipped"] == {"models": 3, "versions": len(held), "stages": staged, "aliases": 3}
    assert last_sequence(registry) == before

    # Act: MLflow gets a fifth fraud-detector version, then another import
    mv = mlflow_client(mlflow_server).create_model_version("fraud-detector", "s3://models/fraud/5")
    status, later, stderr = import_json(registry, "root", "--from", mlflow_server)

    # Assert: only it arrives, under its MLflow number
    assert status == 0, stderr
    assert later["imported"] == {"models": 0, "versions": 1, "stages": 0, "aliases": 0}
    new_events = events(registry, "--after", str(before))
    assert [(e["type"], int(e["version"])) for e in new_events] == [("EVENT_TYPE_VERSION_REGISTERED", int(mv.version))]
    assert registry.cli_json("root", "version", "get", "fraud-detector", mv.version)["artifact_uri"] == "s3://models/fraud/5"


def test_model_option_imports_that_model_only(registry: Registry, mlflow_server: str) -> None:
    """`--model churn` copies churn (versions, alias) and no other model."""
    # Arrange
    fill(mlflow_server)

    # Act
    status, summary, stderr = import_json(registry, "root", "--from", mlflow_server, "--model", "churn")

    # Assert
    assert status == 0, stderr
    assert summary["imported"] == {"models": 1, "versions": 2, "stages": 1, "aliases": 1}
    names = [m["name"] for m in registry.cli_json("root", "model", "list")]
    assert names == ["churn"]


def test_a_refused_name_is_reported_and_the_rest_imported(registry: Registry, mlflow_server: str) -> None:
    """A model named as MLflow allows and modelreg does not is listed as
    refused with the reason; the exit status says so; the other model is
    imported. A publisher may not import at all, and creates nothing."""
    # Arrange
    fill(mlflow_server, {
        "Fraud Detector": ("", {}, {}, [("s3://m/1", "", {}, "", "None")]),
        "fraud": ("", {}, {}, [("s3://m/2", "", {}, "", "Staging")]),
    })

    # Act
    denied, _, denied_err = import_json(registry, "ci", "--from", mlflow_server)
    status, summary, stderr = import_json(registry, "root", "--from", mlflow_server)

    # Assert
    assert denied == 7 and "PermissionDenied" in denied_err, denied_err
    assert status != 0
    assert "refused" in stderr
    assert summary["imported"] == {"models": 1, "versions": 1, "stages": 1, "aliases": 0}
    [refusal] = summary["refused"]
    assert refusal["model"] == "Fraud Detector"
    assert refusal["reason"].startswith("InvalidArgument: name") and "[a-z0-9" in refusal["reason"], refusal
    assert [m["name"] for m in registry.cli_json("root", "model", "list")] == ["fraud"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "ftp://example"])
def test_an_unreachable_or_wrong_source_is_a_clear_error(registry: Registry, url: str) -> None:
    """No MLflow at the URL, or a URL that is not http(s): a message, no panic."""
    status, summary, stderr = import_json(registry, "root", "--from", url)
    assert status != 0 and summary is None
    assert "error:" in stderr and "panicked" not in stderr, stderr
