#!/usr/bin/env python3
"""Sets the example up, once: the data split, the standard evaluation set and the model.

- writes a fixed held-out split of scikit-learn's breast cancer data set
  (shipped with scikit-learn: no download) to WORKDIR/data/holdout.csv, and
  the rest to WORKDIR/data/train.csv; an existing split is kept, never rewritten;
- creates the evaluation set cancer-holdout@v1 with the holdout's URI and
  digest, scored with accuracy, precision, recall and F1 (higher is better)
  and latency_ms (lower is better);
- creates the model breast-cancer with a policy: that set is the standard,
  F1 and accuracy at least 0.9 and F1 not more than 0.01 below production,
  and a live rule: an error_rate above 0.2 for a whole --window rolls back.

Needs the admin role (local mode: any name). Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import sys

from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from common import EVAL_SET, MODEL, digest_of, modelreg, workdir_arg, write_rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Write the data split, create the evaluation set and the model.")
    workdir_arg(parser)
    parser.add_argument("--window", default="5m", help="how long error_rate may stay above 0.2 before a rollback")
    args = parser.parse_args()
    data = args.workdir.resolve() / "data"
    holdout, train = data / "holdout.csv", data / "train.csv"
    if not holdout.exists():
        x, y = load_breast_cancer(return_X_y=True)
        x_train, x_hold, y_train, y_hold = train_test_split(x, y, test_size=0.3, random_state=7, stratify=y)
        write_rows(train, x_train, y_train)
        write_rows(holdout, x_hold, y_hold)
    digest = digest_of(holdout)
    print(f"holdout {holdout} {digest}")

    name, version = EVAL_SET.split("@")
    made = modelreg("evalset", "create", name, version, "--uri", holdout.as_uri(), "--digest", digest,
                    "--description", "breast cancer, 30% stratified holdout, random_state=7",
                    "--metric", "accuracy:higher", "--metric", "precision:higher", "--metric", "recall:higher",
                    "--metric", "f1:higher", "--metric", "latency_ms:lower", check=False)
    if made.returncode not in (0, 5):  # 5: ALREADY_EXISTS, from an earlier run
        sys.exit(f"evalset create: {made.stderr.strip()}")
    made = modelreg("model", "create", MODEL, "--description", "tumour classifier (scikit-learn example)", check=False)
    if made.returncode not in (0, 5):
        sys.exit(f"model create: {made.stderr.strip()}")
    modelreg("model", "policy", MODEL, "--standard-set", EVAL_SET,
             "--gate", "f1:min_value=0.9,max_regression=0.01", "--gate", "accuracy:min_value=0.9",
             "--live-metric", f"error_rate:lower:0.2:{args.window}:rollback")
    print(f"model {MODEL}: standard set {EVAL_SET}, gates on f1 and accuracy, live error_rate rule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
