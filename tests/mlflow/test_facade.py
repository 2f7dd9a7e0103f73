"""The unchanged MLflow client against modelreg's MLflow facade.

Every test starts a real modelreg-server (SQLite, a token file) and points
MLflow's own client at its HTTP listener with ``MLFLOW_REGISTRY_URI`` and
``MLFLOW_TRACKING_TOKEN``: nothing in the client is patched or mocked. What
the client cannot show (approvals, events, the audit trail) is checked with
the real ``modelreg`` CLI over gRPC.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import Registry


def client(registry: Registry, identity: str = "alice") -> MlflowClient:
    """MLflow's client as ``identity``: MLflow reads MLFLOW_TRACKING_TOKEN at each call, so
    this switches every client of the test to that identity."""
    import os

    os.environ["MLFLOW_TRACKING_TOKEN"] = registry.tokens[identity]
    return MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)


def events(registry: Registry, count: int, *args: str) -> list[dict]:
    """The first ``count`` events of the log, read with `modelreg watch` (WatchTransitions)."""
    out = registry.cli("viewer", "watch", "--after", "0", "--count", str(count), *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def latest_sequence(registry: Registry) -> int:
    listed = registry.cli_json("viewer", "events")
    return max((int(e["sequence"]) for e in listed), default=0)


def call(registry: Registry, method: str, path: str, body: bytes | None = None,
         token: str | None = "alice", content_type: str = "application/json",
         headers: dict | None = None) -> tuple[int, dict]:
    """A raw HTTP call to the facade: (status, parsed JSON body)."""
    req = urllib.request.Request(f"{registry.url}/api/2.0/mlflow/{path}", data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    if token is not None:
        req.add_header("Authorization", f"Bearer {registry.tokens[token]}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_register_read_search_update_tag_alias(mlflow_env: Registry) -> None:
    reg = mlflow_env
    # mlflow.register_model creates the model on first use, then a version each call.
    v1 = mlflow.register_model("s3://models/fraud/1", "fraud")
    v2 = mlflow.register_model("s3://models/fraud/2", "fraud")
    assert (v1.name, v1.version, v1.source, v1.current_stage) == ("fraud", "1", "s3://models/fraud/1", "None")
    assert (v2.version, v2.source, v2.status) == ("2", "s3://models/fraud/2", "READY")
    assert v1.user_id == "alice"

    c = client(reg)
    rm = c.create_registered_model("churn", tags={"team": "growth"}, description="churn model")
    assert (rm.name, rm.description, rm.tags) == ("churn", "churn model", {"team": "growth"})
    with pytest.raises(MlflowException) as dup:
        c.create_registered_model("churn")
    assert dup.value.error_code == "RESOURCE_ALREADY_EXISTS"

    mv = c.create_model_version("churn", "gs://b/churn/1", run_id="run-7", tags={"framework": "xgb"},
                                run_link="https://ci.example/runs/7", description="first")
    assert (mv.version, mv.run_id, mv.run_link, mv.tags, mv.description) == (
        "1", "run-7", "https://ci.example/runs/7", {"framework": "xgb"}, "first")

    got = c.get_registered_model("fraud")
    assert got.name == "fraud"
    assert [v.version for v in got.latest_versions] == ["2"]  # the newest in stage None
    assert got.creation_timestamp > 1_600_000_000_000  # epoch milliseconds

    # search: exact name, LIKE, tags, paging
    assert [m.name for m in c.search_registered_models()] == ["churn", "fraud"]
    assert [m.name for m in c.search_registered_models("name = 'fraud'")] == ["fraud"]
    assert [m.name for m in c.search_registered_models("name LIKE 'ch%'")] == ["churn"]
    assert [m.name for m in c.search_registered_models("tags.team = 'growth'")] == ["churn"]
    first = c.search_registered_models(max_results=1)
    assert [m.name for m in first] == ["churn"] and first.token
    second = c.search_registered_models(max_results=1, page_token=first.token)
    assert [m.name for m in second] == ["fraud"] and not second.token
    with pytest.raises(MlflowException) as bad:
        c.search_registered_models("stage = 'x'")
    assert bad.value.error_code == "INVALID_PARAMETER_VALUE"

    # update and tags
    assert c.update_registered_model("fraud", description="card fraud").description == "card fraud"
    c.set_registered_model_tag("fraud", "owner", "risk")
    c.set_registered_model_tag("fraud", "tier", "1")
    c.delete_registered_model_tag("fraud", "tier")
    assert c.get_registered_model("fraud").tags == {"owner": "risk"}
    assert c.update_model_version("fraud", "1", description="baseline").description == "baseline"
    c.set_model_version_tag("fraud", "1", "validated", "yes")
    c.set_model_version_tag("fraud", "2", "validated", "no")
    c.delete_model_version_tag("fraud", "2", "validated")
    assert c.get_model_version("fraud", "1").tags == {"validated": "yes"}
    assert c.get_model_version("fraud", "2").tags == {}

    # model version search: by name, run id, tag
    assert sorted(v.version for v in c.search_model_versions("name = 'fraud'")) == ["1", "2"]
    assert [(v.name, v.version) for v in c.search_model_versions("run_id = 'run-7'")] == [("churn", "1")]
    assert [(v.name, v.version) for v in c.search_model_versions("tags.validated = 'yes'")] == [("fraud", "1")]
    assert c.search_model_versions("name = 'nothing-here'") == []

    # aliases
    c.set_registered_model_alias("fraud", "champion", "1")
    by_alias = c.get_model_version_by_alias("fraud", "champion")
    assert (by_alias.version, by_alias.aliases) == ("1", ["champion"])
    assert c.get_registered_model("fraud").aliases == {"champion": "1"}
    c.delete_registered_model_alias("fraud", "champion")
    with pytest.raises(MlflowException) as gone:
        c.get_model_version_by_alias("fraud", "champion")
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    assert c.get_model_version_download_uri("fraud", "2") == "s3://models/fraud/2"
    latest = c.get_latest_versions("fraud", stages=["None"])
    assert [v.version for v in latest] == ["2"]

    # Each write went through the registry: its events carry the caller.
    log = events(reg, latest_sequence(reg))
    kinds = [(e["type"].removeprefix("EVENT_TYPE_"), e["model"], e["version"], e["actor"]) for e in log]
    assert kinds[:3] == [("MODEL_CREATED", "fraud", 0, "alice"), ("VERSION_REGISTERED", "fraud", 1, "alice"),
                         ("VERSION_REGISTERED", "fraud", 2, "alice")]
    assert ("VERSION_UPDATED", "fraud", 1, "alice") in kinds
    assert ("ALIAS_SET", "fraud", 1, "alice") in kinds and ("ALIAS_DELETED", "fraud", 1, "alice") in kinds
    registered = log[1]["details"]
    assert registered["artifact_uri"] == "s3://models/fraud/1"


def test_promotion_follows_the_policy_and_approval(mlflow_env: Registry) -> None:
    reg = mlflow_env
    c = client(reg)
    c.create_registered_model("fraud")
    c.create_model_version("fraud", "s3://models/fraud/1")
    c.create_model_version("fraud", "s3://models/fraud/2")

    staged = c.transition_model_version_stage("fraud", "1", "Staging")
    assert staged.current_stage == "Staging"

    # The default policy: entering Production waits for an approver.
    with pytest.raises(MlflowException) as waits:
        c.transition_model_version_stage("fraud", "1", "Production")
    message = waits.value.message
    assert "fraud:1" in message and "modelreg approve fraud:1" in message, message
    assert f"{reg.url}/requests/fraud%3A1" in message, message
    assert c.get_model_version("fraud", "1").current_stage == "Staging"
    assert c.get_latest_versions("fraud", stages=["Production"]) == []

    pending = reg.cli_json("viewer", "requests", "list", "--model", "fraud")
    assert [(r["id"], r["status"], r["requester"]) for r in pending] == [
        ("fraud:1", "TRANSITION_REQUEST_STATUS_PENDING", "alice")]

    # The requester may not approve their own request; another approver does.
    refused = reg.cli("alice", "approve", "fraud:1", check=False)
    assert refused.returncode != 0 and "SELF_APPROVAL" in refused.stderr + refused.stdout
    reg.cli("bob", "approve", "fraud:1")
    assert c.get_model_version("fraud", "1").current_stage == "Production"
    assert [v.version for v in c.get_latest_versions("fraud", stages=["Production"])] == ["1"]

    # An illegal move is refused with the allowed targets named, and changes nothing.
    with pytest.raises(MlflowException) as illegal:
        c.transition_model_version_stage("fraud", "2", "Production")
    assert illegal.value.error_code == "INVALID_STATE"
    assert "STAGING" in illegal.value.message, illegal.value.message

    # Version 2 follows; entering production archives version 1
    # (archive_existing_versions is modelreg's rule whatever the flag says).
    c.transition_model_version_stage("fraud", "2", "Staging")
    with pytest.raises(MlflowException):
        c.transition_model_version_stage("fraud", "2", "Production", archive_existing_versions=False)
    reg.cli("bob", "approve", "fraud:2")
    stages = {v.version: v.current_stage for v in c.search_model_versions("name = 'fraud'")}
    assert stages == {"1": "Archived", "2": "Production"}

    log = events(reg, 11, "--model", "fraud")
    moves = [(e["type"].removeprefix("EVENT_TYPE_"), e["version"], e["to_stage"], e["cause"], e["actor"])
             for e in log]
    assert moves == [
        ("MODEL_CREATED", 0, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "alice"),
        ("VERSION_REGISTERED", 1, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "alice"),
        ("VERSION_REGISTERED", 2, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "alice"),
        ("STAGE_CHANGED", 1, "STAGE_STAGING", "STAGE_CHANGE_CAUSE_REQUEST", "alice"),
        ("TRANSITION_REQUESTED", 1, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "alice"),
        ("TRANSITION_APPROVED", 1, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "bob"),
        ("STAGE_CHANGED", 1, "STAGE_PRODUCTION", "STAGE_CHANGE_CAUSE_APPROVAL", "bob"),
        ("STAGE_CHANGED", 2, "STAGE_STAGING", "STAGE_CHANGE_CAUSE_REQUEST", "alice"),
        ("TRANSITION_REQUESTED", 2, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "alice"),
        ("TRANSITION_APPROVED", 2, "STAGE_UNSPECIFIED", "STAGE_CHANGE_CAUSE_UNSPECIFIED", "bob"),
        ("STAGE_CHANGED", 1, "STAGE_ARCHIVED", "STAGE_CHANGE_CAUSE_SUPERSEDED", "bob"),
    ]
    assert reg.cli_json("viewer", "audit", "verify")["ok"] is True


def test_failing_gates_are_listed(mlflow_env: Registry) -> None:
    reg = mlflow_env
    c = client(reg)
    reg.cli("root", "evalset", "create", "holdout", "2026-06", "--uri", "s3://data/holdout",
            "--digest", "sha256:" + "ab" * 32, "--metric", "accuracy:higher", "--metric", "latency_ms:lower")
    c.create_registered_model("scoring")
    reg.cli("root", "model", "policy", "scoring", "--standard-set", "holdout@2026-06",
            "--gate", "accuracy:min_value=0.9", "--gate", "latency_ms:max_value=50")
    c.create_model_version("scoring", "s3://models/scoring/1")
    c.transition_model_version_stage("scoring", "1", "Staging")
    before = latest_sequence(reg)
    with pytest.raises(MlflowException) as gated:
        c.transition_model_version_stage("scoring", "1", "Production")
    message = gated.value.message
    assert gated.value.error_code == "INVALID_STATE"
    assert "accuracy" in message and "latency_ms" in message, message
    # Refused by the gates: no request, no event.
    assert latest_sequence(reg) == before
    assert reg.cli_json("viewer", "requests", "list", "--model", "scoring") == []


def test_roles_and_credentials(mlflow_env: Registry) -> None:
    reg = mlflow_env
    client(reg).create_registered_model("fraud")
    reader = client(reg, "viewer")
    assert reader.get_registered_model("fraud").name == "fraud"
    before = latest_sequence(reg)
    with pytest.raises(MlflowException) as denied:
        reader.create_model_version("fraud", "s3://models/fraud/1")
    assert denied.value.error_code == "PERMISSION_DENIED"
    assert "publisher" in denied.value.message and "viewer" in denied.value.message
    with pytest.raises(MlflowException) as denied:
        reader.set_registered_model_tag("fraud", "k", "v")
    assert denied.value.error_code == "PERMISSION_DENIED"
    assert latest_sequence(reg) == before

    # No token, a wrong token: UNAUTHENTICATED. Basic auth carries the token as password.
    status, body = call(reg, "GET", "registered-models/get?name=fraud", token=None)
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    status, body = call(reg, "GET", "registered-models/get?name=fraud", token=None,
                        headers={"Authorization": "Bearer not-a-token"})
    assert (status, body["error_code"]) == (401, "UNAUTHENTICATED")
    # Refused before the body matters, the answer still arrives whole: the body
    # is read first (a socket closed on unread data is reset under the client).
    big = json.dumps({"name": "fraud", "source": "s3://x", "description": "d" * (3 * 1024 * 1024)}).encode()
    for token in (None, "viewer"):
        status, body = call(reg, "POST", "model-versions/create", big, token=token)
        assert (status, body["error_code"]) == ((401, "UNAUTHENTICATED") if token is None else
                                               (403, "PERMISSION_DENIED")), body
    basic = base64.b64encode(f"someone:{reg.tokens['ci']}".encode()).decode()
    status, body = call(reg, "POST", "model-versions/create", json.dumps(
        {"name": "fraud", "source": "s3://models/fraud/1"}).encode(), token=None,
        headers={"Authorization": f"Basic {basic}"})
    assert status == 200 and body["model_version"]["user_id"] == "ci", body
    # The MLflow UI's prefix serves the same API.
    req = urllib.request.Request(f"{reg.url}/ajax-api/2.0/mlflow/registered-models/get?name=fraud")
    req.add_header("Authorization", f"Bearer {reg.tokens['viewer']}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert json.loads(resp.read())["registered_model"]["latest_versions"][0]["version"] == "1"


def test_bad_input_gets_mlflow_errors_and_changes_nothing(mlflow_env: Registry) -> None:
    reg = mlflow_env
    client(reg).create_registered_model("fraud")
    client(reg).create_model_version("fraud", "s3://models/fraud/1")
    before = latest_sequence(reg)
    cases = [
        ("POST", "registered-models/create", b'{"name": ', 400, "INVALID_PARAMETER_VALUE", "not valid JSON"),
        ("POST", "registered-models/create", b'["fraud"]', 400, "INVALID_PARAMETER_VALUE", "JSON object"),
        ("POST", "registered-models/create", b'{"name": 7}', 400, "INVALID_PARAMETER_VALUE", "'name' must be a string"),
        ("POST", "registered-models/create", b'{"name": "Bad Name"}', 400, "INVALID_PARAMETER_VALUE", "name"),
        ("POST", "registered-models/create", b'{"name": "x", "tags": {"a": "b"}}', 400,
         "INVALID_PARAMETER_VALUE", "tags"),
        ("POST", "model-versions/create", b'{"name": "fraud"}', 400, "INVALID_PARAMETER_VALUE", "source"),
        ("POST", "model-versions/create", b'{"name": "fraud", "source": "s3://x", "run_link": "javascript:x"}',
         400, "INVALID_PARAMETER_VALUE", "run_link"),
        ("POST", "model-versions/create", b'{"name": "nope", "source": "s3://x"}', 404,
         "RESOURCE_DOES_NOT_EXIST", "nope"),
        ("POST", "model-versions/transition-stage", b'{"name": "fraud", "version": "x", "stage": "Staging"}',
         400, "INVALID_PARAMETER_VALUE", "version"),
        ("POST", "model-versions/transition-stage", b'{"name": "fraud", "version": "1", "stage": "Live"}',
         400, "INVALID_PARAMETER_VALUE", "Staging"),
        ("POST", "model-versions/transition-stage",
         b'{"name": "fraud", "version": "1", "stage": "Staging", "archive_existing_versions": "maybe"}',
         400, "INVALID_PARAMETER_VALUE", "archive_existing_versions"),
        ("POST", "model-versions/transition-stage", b'{"name": "fraud", "version": "9", "stage": "Staging"}',
         404, "RESOURCE_DOES_NOT_EXIST", "fraud/9"),
        ("POST", "registered-models/alias", b'{"name": "fraud", "alias": "c", "version": "5"}',
         404, "RESOURCE_DOES_NOT_EXIST", "fraud/5"),
        ("POST", "registered-models/create", b"x" * (5 * 1024 * 1024), 400, "INVALID_PARAMETER_VALUE", "larger"),
        ("POST", "registered-models/rename", b'{"name": "fraud", "new_name": "f2"}', 403, "FEATURE_DISABLED",
         "rename"),
        ("DELETE", "registered-models/delete", b'{"name": "fraud"}', 403, "FEATURE_DISABLED", "permanent"),
        ("DELETE", "model-versions/delete", b'{"name": "fraud", "version": "1"}', 403, "FEATURE_DISABLED",
         "Archived"),
        ("DELETE", "registered-models/delete-tag", b'{"name": "fraud", "key": "missing"}', 404,
         "RESOURCE_DOES_NOT_EXIST", "missing"),
        ("GET", "experiments/search", None, 404, "ENDPOINT_NOT_FOUND", "MLFLOW_TRACKING_URI"),
        ("PUT", "registered-models/create", b"{}", 405, "ENDPOINT_NOT_FOUND", "POST"),
        ("GET", "registered-models/search?max_results=5000", None, 400, "INVALID_PARAMETER_VALUE", "max_results"),
        ("GET", "registered-models/search?page_token=forged", None, 400, "INVALID_PARAMETER_VALUE", "page_token"),
    ]
    for method, path, body, status, code, fragment in cases:
        got_status, got = call(reg, method, path, body)
        assert (got_status, got.get("error_code")) == (status, code), (method, path, got)
        assert fragment in got["message"], (method, path, got)
    # A form post (what a cross-site page can send without a preflight) is refused.
    status, got = call(reg, "POST", "registered-models/create", b"name=evil",
                       content_type="application/x-www-form-urlencoded")
    assert (status, got["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    assert latest_sequence(reg) == before
    assert [m["name"] for m in reg.cli_json("viewer", "model", "list")] == ["fraud"]
