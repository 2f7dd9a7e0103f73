"""The example evaluation worker runs against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc

from modelreg_client import pb

WORKER = Path(__file__).resolve().parents[1] / "examples" / "evaluate_worker.py"


def test_evaluate_worker_handles_exactly_the_versions_entering_staging(server, registry, tmp_path):
    """The example worker sees only STAGE_CHANGED→STAGING events, says what it would attach, attaches it
    (or, on a server without evaluations, survives UNIMPLEMENTED), and saves its cursor so a restart
    resumes after the last event."""
    # Arrange: version 1 enters staging, version 2 stays in NONE, version 3 is registered into staging.
    registry.create_model("churn")
    registry.register_version("churn", "s3://models/churn/1/", training_metrics={"accuracy": 0.95})
    registry.transition_stage("churn", 1, pb.STAGE_STAGING)
    registry.register_version("churn", "s3://models/churn/2/")
    registry.register_version("churn", "s3://models/churn/3/", target_stage=pb.STAGE_STAGING)
    state = tmp_path / "worker.cursor"
    evaluations_implemented = create_evaluation_set(registry, "churn-holdout", "2026-06")

    # Act
    run = subprocess.run(
        [sys.executable, str(WORKER), "--target", server.address, "--actor", "evaluator",
         "--evaluation-set", "churn-holdout:2026-06", "--after-sequence", "0",
         "--state-file", str(state), "--max-events", "2"],
        capture_output=True, text=True, timeout=60,
    )

    # Assert
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "churn v1 entered STAGING; would attach" in out
    assert "churn v3 entered STAGING; would attach" in out
    assert "v2" not in out
    assert '"accuracy": 0.94' in out  # derived from v1's training metrics
    if evaluations_implemented:
        assert out.count("attached evaluation") == 2, out + run.stderr
        assert [len(registry.get_version("churn", v).evaluations) for v in (1, 2, 3)] == [1, 0, 1]
    else:
        assert out.count("AttachEvaluation is UNIMPLEMENTED") == 2, out + run.stderr
    staging_events = list(registry.list_events(model="churn", types=[pb.EVENT_TYPE_STAGE_CHANGED]))
    assert int(state.read_text()) == staging_events[-1].sequence


def create_evaluation_set(registry, name: str, version: str) -> bool:
    """Creates the evaluation set the worker scores on; False when the server has no evaluations yet."""
    request = pb.CreateEvaluationSetRequest(
        name=name,
        version=version,
        uri=f"s3://datasets/{name}/{version}/",
        digest="sha256:" + "0" * 64,
        metrics=[pb.MetricDefinition(name="accuracy", higher_is_better=True),
                 pb.MetricDefinition(name="f1", higher_is_better=True)],
    )
    try:
        registry.call("CreateEvaluationSet", request)
        return True
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return False
        raise
