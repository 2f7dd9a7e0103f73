#!/usr/bin/env python3
"""An evaluation worker: scores every version that enters STAGE_STAGING.

It watches the registry for STAGE_CHANGED events into STAGE_STAGING, "evaluates"
the version on the standard evaluation set, and attaches the metrics with
AttachEvaluation. The evaluation here is a stand-in (it derives numbers from the
version's training metrics); put your real scoring code in ``evaluate()``, or see
examples/sklearn/evaluate.py at the repository's root: real scoring of a
scikit-learn model through a canary prediction server, run by
``modelreg worker evaluate`` on the digest-verified evaluation set.

The worker is restartable without missing or repeating work: the watch resumes
by itself after a server restart, and ``--state-file`` keeps the last sequence
seen across restarts of the worker itself. AttachEvaluation is idempotent by
``request_id``, derived from the event, so a replayed event attaches nothing twice.

It prints what it attaches before attaching it; on a server that does not
implement AttachEvaluation (UNIMPLEMENTED) it stops there and carries on.

    python examples/evaluate_worker.py --target 127.0.0.1:50051 --actor evaluator \\
        --evaluation-set fraud-holdout:2026-06 --state-file .evaluate-worker.cursor
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import grpc

import modelreg_client
from modelreg_client import pb

EVALUATOR_VERSION = "example-evaluator-1.0"  # the version of the scoring code


def evaluate(version: pb.ModelVersion) -> dict[str, float]:
    """Scores a version on the evaluation set. A stand-in for real scoring code
    (examples/sklearn/evaluate.py is the real thing)."""
    accuracy = version.training_metrics.get("accuracy", 0.9)
    return {"accuracy": round(max(0.0, accuracy - 0.01), 4), "f1": round(max(0.0, accuracy - 0.03), 4)}


def read_cursor(path: Optional[Path]) -> Optional[int]:
    if path is None or not path.exists():
        return None
    text = path.read_text().strip()
    return int(text) if text else None


def write_cursor(path: Optional[Path], cursor: Optional[int]) -> None:
    if path is None or cursor is None:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{cursor}\n")
    os.replace(tmp, path)  # atomic: a crash leaves the old or the new cursor, never half of one


def handle(registry: modelreg_client.RegistryClient, event: pb.RegistryEvent, evaluation_set: tuple[str, str]) -> None:
    """Evaluates the version of one STAGE_CHANGED→STAGING event and attaches the result."""
    version = registry.get_version(event.model, event.version)
    metrics = evaluate(version)
    plan = {
        "model": event.model,
        "version": event.version,
        "evaluation_set": {"name": evaluation_set[0], "version": evaluation_set[1]},
        "evaluator_version": EVALUATOR_VERSION,
        "metrics": metrics,
        "request_id": f"evaluate-{event.sequence}",
    }
    print(f"event {event.sequence}: {event.model} v{event.version} entered STAGING; would attach {json.dumps(plan)}", flush=True)
    try:
        evaluation = registry.attach_evaluation(
            event.model,
            event.version,
            evaluation_set,
            EVALUATOR_VERSION,
            metrics,
            request_id=plan["request_id"],
        )
        print(f"event {event.sequence}: attached evaluation at {evaluation.create_time.ToJsonString()}", flush=True)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            print(f"event {event.sequence}: AttachEvaluation is UNIMPLEMENTED on this server; skipped", flush=True)
        elif err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
            # The request itself is wrong (unknown set, metrics not matching it): retrying will not help.
            details = modelreg_client.field_violations(err)
            print(f"event {event.sequence}: refused: {err.code().name}: {err.details()} {details}", file=sys.stderr, flush=True)
        else:
            raise


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Evaluate every model version that enters STAGE_STAGING.")
    parser.add_argument("--target", default=os.environ.get("MODELREG_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("MODELREG_TOKEN"), help="bearer token")
    parser.add_argument("--actor", default=os.environ.get("MODELREG_ACTOR", "evaluate-worker"),
                        help="identity in local mode (no tokens)")
    parser.add_argument("--ca-cert", help="PEM file of the server's CA; enables TLS")
    parser.add_argument("--model", action="append", default=[], help="only this model (repeatable); default: all")
    parser.add_argument("--evaluation-set", default="standard:v1", help="NAME:VERSION of the evaluation set")
    parser.add_argument("--after-sequence", type=int, help="start after this event (0 = replay all); default: now")
    parser.add_argument("--state-file", type=Path, help="keeps the cursor across worker restarts")
    parser.add_argument("--max-events", type=int, help="exit after handling this many events (for tests and demos)")
    args = parser.parse_args(argv)

    name, _, set_version = args.evaluation_set.partition(":")
    if not name or not set_version:
        parser.error("--evaluation-set must be NAME:VERSION")
    after = args.after_sequence if args.after_sequence is not None else read_cursor(args.state_file)

    registry = modelreg_client.connect(args.target, token=args.token, actor=args.actor, ca_cert=args.ca_cert)
    watch = registry.watch(
        models=args.model,
        types=[pb.EVENT_TYPE_STAGE_CHANGED],
        to_stages=[pb.STAGE_STAGING],
        after_sequence=after,
    )
    # SIGTERM (from a supervisor) stops the loop cleanly, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: watch.cancel())
    where = "now" if after is None else f"after event {after}"
    print(f"watching {args.target} for versions entering STAGE_STAGING, from {where}", flush=True)

    handled = 0
    try:
        for item in watch:
            if item.WhichOneof("kind") == "event":
                handle(registry, item.event, (name, set_version))
                handled += 1
            # The cursor moves on heartbeats too; saving it then keeps restarts cheap.
            write_cursor(args.state_file, watch.cursor)
            if args.max_events is not None and handled >= args.max_events:
                break
    except KeyboardInterrupt:
        pass
    finally:
        watch.close()
        registry.close()
    print(f"stopped after {handled} event(s); cursor {watch.cursor}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
