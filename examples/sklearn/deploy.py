#!/usr/bin/env python3
"""The deploy and undeploy commands of `modelreg worker deploy`.

``deploy.py up`` starts the version as a production prediction server
(serve.py on a free port, in a session of its own so it outlives this
command) and prints its URL, which the worker reports as the deployment's
endpoint. ``deploy.py down`` stops it. Both are idempotent, as the worker
needs: ``up`` for a version already serving prints its URL again, ``down``
for one not running does nothing. The worker gives them:

    MODELREG_ARTIFACT_PATH   the verified artifact (up)
    MODELREG_MODEL, MODELREG_VERSION, MODELREG_ENVIRONMENT

Each server's pid, URL and log are WORKDIR/run/ENV-MODEL-VERSION.{pid,url,log}.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from common import call, start_server, workdir_arg


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def up(base: Path) -> int:
    pid_file, url_file = base.with_suffix(".pid"), base.with_suffix(".url")
    version = os.environ["MODELREG_VERSION"]
    if pid_file.exists() and url_file.exists() and alive(int(pid_file.read_text())):
        url = url_file.read_text().strip()
        if str(call(url + "/health").get("version")) == version:
            print(url)
            return 0
    artifact = os.environ.get("MODELREG_ARTIFACT_PATH")
    if not artifact:
        sys.exit("no MODELREG_ARTIFACT_PATH: register the version with --digest so the worker can verify it")
    server, url = start_server(artifact, version, base.with_suffix(".ready"), base.with_suffix(".log"), detach=True)
    pid_file.write_text(f"{server.pid}\n")
    url_file.write_text(url + "\n")
    print(url)
    return 0


def down(base: Path) -> int:
    pid_file = base.with_suffix(".pid")
    if not pid_file.exists():
        return 0
    pid = int(pid_file.read_text())
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval while it exits
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    for suffix in (".pid", ".url", ".ready"):
        base.with_suffix(suffix).unlink(missing_ok=True)
    print(f"stopped {base.name}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Start (up) or stop (down) a version's prediction server.")
    parser.add_argument("action", choices=["up", "down"])
    workdir_arg(parser)
    args = parser.parse_args()
    run = args.workdir.resolve() / "run"
    run.mkdir(parents=True, exist_ok=True)
    env = os.environ
    base = run / f"{env['MODELREG_ENVIRONMENT']}-{env['MODELREG_MODEL']}-{env['MODELREG_VERSION']}"
    return up(base) if args.action == "up" else down(base)


if __name__ == "__main__":
    sys.exit(main())
