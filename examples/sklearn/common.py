"""What the scikit-learn example's scripts share: the model and set names,
the work directory's layout, the data files, the `modelreg` CLI, and the
prediction server: starting it and calling it. Standard library only."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The registered model.
MODEL = "breast-cancer"
#: The standard evaluation set, NAME@VERSION.
EVAL_SET = "cancer-holdout@v1"
#: The version of the scoring code in evaluate.py; bump it when the metrics change.
EVALUATOR_VERSION = "sklearn-example-1"


def workdir_arg(parser: argparse.ArgumentParser) -> None:
    """Adds --workdir: where data, artifacts and running servers' files live."""
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(os.environ.get("SKLEARN_EXAMPLE_DIR", "sklearn-example")),
        help="data/, artifacts/ and run/ live here (default: ./sklearn-example or $SKLEARN_EXAMPLE_DIR)",
    )


def digest_of(path: Path) -> str:
    """``sha256:<hex>`` of a file, as the registry records it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def write_rows(path: Path, features, labels) -> None:
    """Writes a data file: one row per sample, the features then the label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        for x, y in zip(features, labels):
            out.writerow([repr(float(v)) for v in x] + [int(y)])


def read_rows(path: Path) -> tuple[list[list[float]], list[int]]:
    """Reads a data file written by :func:`write_rows`."""
    features, labels = [], []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            features.append([float(v) for v in row[:-1]])
            labels.append(int(row[-1]))
    return features, labels


def modelreg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the `modelreg` CLI ($MODELREG_CLI, default: on PATH); the server
    and identity come from $MODELREG_SERVER and $MODELREG_ACTOR or $MODELREG_TOKEN."""
    cli = os.environ.get("MODELREG_CLI", "modelreg")
    run = subprocess.run([cli, *args], capture_output=True, text=True)
    if check and run.returncode != 0:
        sys.exit(f"modelreg {' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
    return run


def modelreg_json(*args: str):
    """The CLI's --json answer."""
    return json.loads(modelreg("--json", *args).stdout)


def call(url: str, body=None, timeout: float = 10.0):
    """GET (or POST ``body`` as JSON to) a prediction server; the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.load(resp)


def start_server(artifact: str, version: str, ready: Path, log: Path, *, detach: bool) -> tuple[subprocess.Popen, str]:
    """Starts serve.py for ``artifact`` on a free port; returns it and its URL
    once it answers /health. ``detach``: in a session of its own, to outlive us."""
    ready.unlink(missing_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve.py"), "--artifact", artifact, "--version", version,
             "--port", "0", "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=detach,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"serve.py exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if ready.exists():
            url = ready.read_text().strip()
            return proc, url
        time.sleep(0.05)  # poll interval, not a readiness guess
    proc.kill()
    sys.exit(f"serve.py did not start within 120s: {log.read_text(errors='replace')[-2000:]}")
