#!/usr/bin/env python3
"""Trains a classifier on WORKDIR/data/train.csv and registers it, as a CI job would.

Kinds: ``logistic`` (scaled logistic regression: sound), ``forest`` (a random
forest: sound), ``weak`` (logistic regression on a single, weakly informative
feature: deliberately poor, for the gates to refuse). The artifact is a pickle
under WORKDIR/artifacts/; it is registered straight into staging with its
digest, the commit, the training metrics and the run id as request id (a
re-run of the same run returns the same version).
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common import MODEL, digest_of, modelreg_json, read_rows, workdir_arg

#: "mean fractal dimension": barely related to the diagnosis on its own.
WEAK_FEATURE = 9


def build(kind: str):
    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if kind == "forest":
        return RandomForestClassifier(n_estimators=50, random_state=0)
    only_weak = ColumnTransformer([("weak", "passthrough", [WEAK_FEATURE])])
    return make_pipeline(only_weak, StandardScaler(), LogisticRegression())


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description="Train a classifier and register it into staging.")
    workdir_arg(parser)
    parser.add_argument("--kind", choices=["logistic", "forest", "weak"], default="logistic")
    parser.add_argument("--run-id", required=True, help="this training run's id (the registration's request id)")
    parser.add_argument("--commit", default=None, help="the source commit (default: git rev-parse HEAD)")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    x, y = (np.asarray(a) for a in read_rows(workdir / "data" / "train.csv"))
    model = build(args.kind)
    cv_accuracy = cross_val_score(model, x, y, cv=5).mean()
    model.fit(x, y)
    artifact = workdir / "artifacts" / f"{args.run_id}.pkl"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    with open(artifact, "wb") as f:
        pickle.dump(model, f)
    version = modelreg_json(
        "version", "register", MODEL, "--artifact-uri", artifact.as_uri(), "--digest", digest_of(artifact),
        "--commit", args.commit or git_commit(), "--metric", f"cv_accuracy={cv_accuracy:.4f}",
        "--metric", f"train_accuracy={model.score(x, y):.4f}", "--tag", f"kind={args.kind}",
        "--stage", "staging", "--request-id", args.run_id,
    )
    print(f"registered {MODEL}/{version['version']} ({args.kind}, cv_accuracy {cv_accuracy:.4f}) into {version['stage']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
