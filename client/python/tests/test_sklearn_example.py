"""examples/sklearn end to end: a real scikit-learn model through the whole loop.

Real processes only: the server (policy ticks every 200 ms), `modelreg worker
evaluate` running evaluate.py (a canary prediction server scored over HTTP),
`modelreg worker deploy` running deploy.py (production prediction servers),
monitor.py reporting the live error rate, and the CLI as the people. Every
wait polls a condition with a generous deadline; every process the test or
the example started is stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import ServerProcess, cli_binary, running_server
import modelreg_client
from modelreg_client import pb

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sklearn"
MODEL = "breast-cancer"
#: Bounds a broken run only; on a healthy machine each wait takes seconds.
DEADLINE = 180.0


@pytest.fixture
def policy_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose policy engine ticks every 200 ms, so live rules act quickly."""
    yield from running_server(tmp_path, "--policy-interval", "200ms")


class Loop:
    """The example's processes and the CLI, in one work directory."""

    def __init__(self, server: ServerProcess, workdir: Path) -> None:
        self.workdir = workdir
        self.cli = str(cli_binary())
        self.env = {
            **os.environ,
            "MODELREG_SERVER": f"http://{server.address}",
            "MODELREG_CLI": self.cli,
            "SKLEARN_EXAMPLE_DIR": str(workdir),
        }
        self.background: dict[str, subprocess.Popen] = {}
        self.server = server

    def run(self, actor: str, *args: str) -> subprocess.CompletedProcess:
        """Runs a command (an example script when it ends in .py) as ``actor``."""
        argv = [sys.executable, str(EXAMPLE / args[0]), *args[1:]] if args[0].endswith(".py") else [self.cli, *args]
        return subprocess.run(argv, env={**self.env, "MODELREG_ACTOR": actor}, capture_output=True, text=True,
                              cwd=self.workdir, timeout=DEADLINE)

    def ok(self, actor: str, *args: str) -> str:
        done = self.run(actor, *args)
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    def spawn(self, name: str, actor: str, *argv: str) -> None:
        """Starts a long-running process in a session of its own, logging to NAME.log."""
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.background[name] = subprocess.Popen(
                list(argv), env={**self.env, "MODELREG_ACTOR": actor}, cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> None:
        proc = self.background.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        """Stops the workers and monitor, then every prediction server deploy.py left running."""
        for name in list(self.background):
            self.stop(name)
        for pid_file in (self.workdir / "run").glob("*.pid"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def wait_for(self, what: str, check: Callable[[], object]):
        """Polls ``check`` until it returns something truthy, which it returns."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.1)  # poll interval, not a guess at how long anything takes
        logs = "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in ("evaluate", "deploy", "monitor"))
        logs += "\n--- modelreg version list\n" + self.run("reader", "--json", "version", "list", MODEL).stdout[-6000:]
        pytest.fail(f"gave up waiting for {what}\n{logs}\n--- server\n{self.server.log()[-4000:]}")


def predict(endpoint: str, row: list[float]) -> dict:
    req = urllib.request.Request(endpoint + "/predict", data=json.dumps({"instances": [row]}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def first_holdout_row(workdir: Path) -> tuple[list[float], int]:
    line = (workdir / "data" / "holdout.csv").read_text().splitlines()[0].split(",")
    return [float(v) for v in line[:-1]], int(line[-1])


def test_a_scikit_learn_model_goes_through_the_whole_loop(policy_server, tmp_path):
    # One server only: the `registry` fixture would start a second one on the
    # same database, and the two would read each other's ready file.
    loop = Loop(policy_server, tmp_path / "example")
    loop.workdir.mkdir()
    try:
        with modelreg_client.connect(policy_server.address, actor="alice") as registry:
            run_the_loop(loop, registry)
    finally:
        loop.close()


def run_the_loop(loop: Loop, registry) -> None:
    # Arrange: the admin sets up the split, the evaluation set and the policy
    # (an error_rate above 0.2 for 2 s rolls back); the two workers start.
    loop.ok("ada", "prepare.py", "--window", "2s")
    cache = str(loop.workdir / "cache")
    loop.spawn("evaluate", "evaluator", loop.cli, "worker", "evaluate", "--model", MODEL,
               "--set", "cancer-holdout@v1", "--evaluator-version", "sklearn-example-1",
               "--exec", f"{sys.executable} {EXAMPLE / 'evaluate.py'}", "--request", "production",
               "--retries", "0", "--cache-dir", cache, "--cursor-file", "evaluate.cursor", "--after", "0")
    deploy = f"{sys.executable} {EXAMPLE / 'deploy.py'}"
    loop.spawn("deploy", "deployer", loop.cli, "worker", "deploy", "--model", MODEL, "--environment", "prod",
               "--exec", f"{deploy} up", "--undeploy-exec", f"{deploy} down",
               "--retries", "0", "--cache-dir", cache, "--cursor-file", "deploy.cursor", "--after", "0")

    def evaluation(v: int) -> dict:
        evaluations = registry.get_version(MODEL, v).evaluations
        return dict(evaluations[0].metrics) if evaluations else {}

    def pending(v: int) -> str:
        """The id of v's pending transition request, or ""."""
        requests = registry.list_transition_requests(model=MODEL, status=pb.TRANSITION_REQUEST_STATUS_PENDING)
        return next((r.id for r in requests if r.version == v), "")

    def serving(v: int, reported_after: float = 0.0) -> tuple[str, float]:
        """The endpoint and report time of v's SUCCEEDED deployment in prod, if reported after ``reported_after``."""
        for d in registry.get_version(MODEL, v).deployments:
            at = d.report_time.ToNanoseconds() / 1e9
            if d.environment == "prod" and d.status == pb.DEPLOYMENT_STATUS_SUCCEEDED and at > reported_after:
                return d.endpoint, at
        return ()

    row, label = first_holdout_row(loop.workdir)
    measured = {}

    # Version 1, a sound model: trained and registered by CI, scored through
    # its canary by the worker, which asks for production; bob approves.
    loop.ok("ci", "train.py", "--kind", "logistic", "--run-id", "run-1", "--commit", "4f2a9c1")
    request = loop.wait_for("version 1's production request", lambda: pending(1))
    measured[1] = evaluation(1)
    assert measured[1]["f1"] >= 0.9 and measured[1]["latency_ms"] > 0, measured[1]
    loop.ok("bob", "approve", request, "--comment", "canary metrics checked")
    endpoint_1, deployed_1 = loop.wait_for("version 1 serving", lambda: serving(1))
    answer = predict(endpoint_1, row)
    assert answer == {"predictions": [label], "version": 1}

    # Version 2, deliberately weak: scored worse, refused by the gates.
    loop.ok("ci", "train.py", "--kind", "weak", "--run-id", "run-2")
    measured[2] = loop.wait_for("version 2 evaluated", lambda: evaluation(2))
    assert measured[2]["f1"] < measured[1]["f1"] - 0.01, measured
    loop.wait_for("the worker's refused request", lambda: f"{MODEL}/2" in loop.log("evaluate")
                  and "not requested" in loop.log("evaluate"))
    refused = loop.run("alice", "transition", MODEL, "2", "production")
    assert refused.returncode == 6, refused.stderr
    assert "f1" in refused.stderr, refused.stderr
    assert not pending(2)

    # Version 3 passes, is approved and replaces version 1.
    loop.ok("ci", "train.py", "--kind", "forest", "--run-id", "run-3")
    request = loop.wait_for("version 3's production request", lambda: pending(3))
    measured[3] = evaluation(3)
    loop.ok("bob", "approve", request)
    endpoint_3, _ = loop.wait_for("version 3 serving", lambda: serving(3))
    assert predict(endpoint_3, row)["version"] == 3
    loop.wait_for("version 1 stopped", lambda: not (loop.workdir / "run" / f"prod-{MODEL}-1.pid").exists())
    with pytest.raises(urllib.error.URLError):
        predict(endpoint_1, row)

    # The world drifts: the monitor reports a breaching error rate; the
    # registry rolls back to version 1, which the deploy worker serves again.
    loop.spawn("monitor", "monitor", sys.executable, str(EXAMPLE / "monitor.py"), "--flip-labels", "--interval", "0.3")
    loop.wait_for("the rollback to version 1", lambda: registry.get_model(MODEL).production_version == 1)
    loop.stop("monitor")
    endpoint_1, _ = loop.wait_for("version 1 serving again", lambda: serving(1, reported_after=deployed_1))
    assert predict(endpoint_1, row) == {"predictions": [label], "version": 1}
    breaches = list(registry.list_events(model=MODEL, types=[pb.EVENT_TYPE_LIVE_METRIC_BREACH]))
    assert breaches and breaches[0].version == 3, breaches
    rolled_back = [e for e in registry.list_events(model=MODEL, types=[pb.EVENT_TYPE_STAGE_CHANGED])
                   if e.cause == pb.STAGE_CHANGE_CAUSE_ROLLBACK]
    assert {(e.version, e.to_stage) for e in rolled_back} == {(3, pb.STAGE_ARCHIVED), (1, pb.STAGE_PRODUCTION)}
    assert "error_rate" in loop.log("monitor")

    # One byte of the evaluation set changes: the next evaluation fails with
    # the digest message and attaches nothing.
    holdout = loop.workdir / "data" / "holdout.csv"
    data = bytearray(holdout.read_bytes())
    data[0] = ord("9") if data[0] != ord("9") else ord("8")
    holdout.write_bytes(bytes(data))
    loop.ok("ci", "train.py", "--kind", "logistic", "--run-id", "run-4")

    failed = loop.wait_for("the evaluation of version 4 to fail", lambda: list(
        registry.list_events(model=MODEL, version=4, types=[pb.EVENT_TYPE_WORKER_FAILED])))
    error = str(failed[0].details)
    assert "digest mismatch for evaluation set cancer-holdout@v1" in error and "expected sha256:" in error, error
    assert not registry.get_version(MODEL, 4).evaluations
    print("\nmeasured on cancer-holdout@v1 through the canary:")
    for v, metrics in measured.items():
        print(f"  version {v}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in sorted(metrics)))
