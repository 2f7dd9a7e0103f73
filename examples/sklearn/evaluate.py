#!/usr/bin/env python3
"""The evaluation command of `modelreg worker evaluate`: scores a candidate through a canary.

It starts the candidate as a canary prediction server (serve.py on a free
port), sends every row of the standard evaluation set to it over HTTP one
request at a time, and prints the metrics as the last stdout line, which the
worker attaches: accuracy, precision, recall and F1 of the answers, and
latency_ms, the median time of one prediction request. The worker gives it
the verified copies of the set and the artifact:

    MODELREG_EVAL_SET_PATH   the evaluation set, checked against its digest
    MODELREG_ARTIFACT_PATH   the candidate's artifact, checked against its digest
    MODELREG_VERSION         the candidate's version
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from common import call, read_rows, start_server


def main() -> int:
    artifact = os.environ.get("MODELREG_ARTIFACT_PATH")
    if not artifact:
        sys.exit("no MODELREG_ARTIFACT_PATH: register the version with --digest so the worker can verify it")
    features, labels = read_rows(Path(os.environ["MODELREG_EVAL_SET_PATH"]))
    with tempfile.TemporaryDirectory(prefix="canary-") as tmp:
        canary, url = start_server(artifact, os.environ["MODELREG_VERSION"], Path(tmp) / "ready",
                                   Path(tmp) / "canary.log", detach=False)
        try:
            print(f"canary of version {os.environ['MODELREG_VERSION']} at {url}", file=sys.stderr)
            predictions, latencies = [], []
            for row in features:
                started = time.perf_counter()
                answer = call(url + "/predict", {"instances": [row]})
                latencies.append((time.perf_counter() - started) * 1000)
                predictions.append(answer["predictions"][0])
        finally:
            canary.terminate()
            canary.wait(timeout=30)
    metrics = {
        "accuracy": accuracy_score(labels, predictions),
        "precision": precision_score(labels, predictions, zero_division=0),
        "recall": recall_score(labels, predictions, zero_division=0),
        "f1": f1_score(labels, predictions, zero_division=0),
        "latency_ms": statistics.median(latencies),
    }
    print(json.dumps({k: round(float(v), 4) for k, v in metrics.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
