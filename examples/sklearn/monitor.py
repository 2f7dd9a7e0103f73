#!/usr/bin/env python3
"""The live monitor: reports the production model's live error rate.

Every --interval seconds it looks up the production version of breast-cancer
and its endpoint in --environment, sends it a batch of labelled live traffic
(--traffic, a data file; default the holdout) and reports the share of wrong
answers (failed requests count as wrong) as the live metric error_rate with
`modelreg live-metric`. The model's policy (prepare.py) rolls back when
error_rate stays above 0.2 for its window.

Ground truth arrives late in real life; here the traffic file carries it.
--flip-labels pretends the world has changed (every label inverted), which
is how the example shows a rollback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import MODEL, call, modelreg, modelreg_json, read_rows, workdir_arg


def production_endpoint(environment: str):
    """The production version and its endpoint in ``environment``, or None."""
    model = modelreg_json("model", "get", MODEL)
    for d in model.get("deployments", []):
        if d.get("environment") == environment and d.get("status") == "DEPLOYMENT_STATUS_SUCCEEDED":
            return int(d["version"]), d["endpoint"]
    return None


def error_rate(endpoint: str, features, labels) -> float:
    try:
        predictions = call(endpoint + "/predict", {"instances": features})["predictions"]
    except OSError:
        return 1.0
    wrong = sum(p != y for p, y in zip(predictions, labels))
    return wrong / len(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description="Report the production model's live error rate.")
    workdir_arg(parser)
    parser.add_argument("--environment", default="prod")
    parser.add_argument("--traffic", type=Path, help="labelled live traffic (default: WORKDIR/data/holdout.csv)")
    parser.add_argument("--flip-labels", action="store_true", help="simulate drift: invert every label")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many reports (0: never)")
    args = parser.parse_args()
    features, labels = read_rows(args.traffic or args.workdir / "data" / "holdout.csv")
    if args.flip_labels:
        labels = [1 - y for y in labels]
    reported = 0
    while args.rounds == 0 or reported < args.rounds:
        found = production_endpoint(args.environment)
        if found:
            version, endpoint = found
            rate = error_rate(endpoint, features, labels)
            modelreg("live-metric", MODEL, str(version), "error_rate", f"{rate:.4f}")
            print(f"{MODEL}/{version} at {endpoint}: error_rate {rate:.4f}", flush=True)
            reported += 1
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
