"""Fixtures for the MLflow compatibility tests: a real modelreg-server with
its HTTP listener (the MLflow facade) on 127.0.0.1:0 and a token file, the
real `modelreg` CLI, and a real `mlflow server` when a test asks for one.

The binaries are the ones cargo built (``MODELREG_SERVER_BIN`` and
``MODELREG_CLI_BIN``, default ``target/debug/``). Each server picks its own
ports and reports them in its ``--ready-file``: no test picks a port another
process could take first, and there is no fixed sleep.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
#: How long a server may take to start answering.
START_TIMEOUT = 60.0

#: The identities of the token file, each with its roles.
IDENTITIES = {
    "ci": ["publisher"],
    "alice": ["publisher", "approver"],
    "bob": ["approver"],
    "root": ["admin", "publisher", "approver"],
    "viewer": ["reader"],
}


def target_dir() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target if target.is_absolute() else REPO / target


def server_binary() -> Path:
    explicit = os.environ.get("MODELREG_SERVER_BIN")
    return Path(explicit) if explicit else target_dir() / "debug" / "modelreg-server"


def cli_binary() -> Path:
    explicit = os.environ.get("MODELREG_CLI_BIN")
    return Path(explicit) if explicit else server_binary().with_name("modelreg")


def read_ready_file(path: Path) -> Optional[dict]:
    """The ``key=value`` lines of a ready file, or None before it exists."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@dataclass
class Registry:
    """A running modelreg-server: its gRPC address, its facade's URL, its tokens."""

    grpc: str
    url: str
    tokens: dict[str, str]
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    cli_env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, identity: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs the real `modelreg` CLI as ``identity`` against this server."""
        cmd = [str(cli_binary()), "--server", f"http://{self.grpc}", "--token", self.tokens[identity], *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def cli_json(self, identity: str, *args: str):
        """The CLI's ``--json`` output, parsed (one document, or a list of JSON lines)."""
        out = self.cli(identity, "--json", *args).stdout.strip()
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            return [json.loads(line) for line in out.splitlines() if line.strip()]


def write_token_file(path: Path) -> dict[str, str]:
    """A token file with :data:`IDENTITIES`; returns identity → token."""
    tokens = {name: secrets.token_hex(16) for name in IDENTITIES}
    lines = []
    for name, roles in IDENTITIES.items():
        digest = hashlib.sha256(tokens[name].encode()).hexdigest()
        lines += ["[[tokens]]", f'identity = "{name}"', f"roles = {json.dumps(roles)}", f'token_sha256 = "{digest}"', ""]
    path.write_text("\n".join(lines))
    return tokens


def start_registry(workdir: Path, *extra: str) -> Registry:
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(f"modelreg-server not found at {binary}: run `cargo build --workspace --bins`")
    if not cli_binary().is_file():
        pytest.fail(f"modelreg not found at {cli_binary()}: run `cargo build --workspace --bins`")
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = write_token_file(workdir / "tokens.toml")
    ready = workdir / "server.ready"
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "--listen", "127.0.0.1:0",
                "--http-listen", "127.0.0.1:0",
                "--ready-file", str(ready),
                "--database-url", f"sqlite://{workdir / 'registry.db'}",
                "--auth-tokens", str(workdir / "tokens.toml"),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "NO_COLOR": "1"},
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        fields = read_ready_file(ready)
        if fields and "grpc" in fields and "http" in fields:
            return Registry(fields["grpc"], f"http://{fields['http']}", tokens, workdir, proc, log_path)
        if proc.poll() is not None:
            pytest.fail(f"modelreg-server exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.02)  # poll interval, not a readiness guess
    proc.kill()
    pytest.fail(f"modelreg-server wrote no ready file within {START_TIMEOUT}s:\n{log_path.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """A modelreg-server with a fresh SQLite database and the MLflow facade."""
    reg = start_registry(tmp_path / "modelreg")
    try:
        yield reg
    finally:
        stop(reg.proc)


@pytest.fixture
def mlflow_env(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """Points the MLflow client at the facade as ``alice`` (publisher and approver)."""
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry.url)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.url)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", registry.tokens["alice"])
    # No retries with backoff on a refused call: the tests expect the refusal.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return registry


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` with a SQLite backend; yields its URL.

    It listens on port 0 and its web server (uvicorn) logs the port it got:
    no port is picked here that another process could take first."""
    workdir = tmp_path / "mlflow"
    workdir.mkdir()
    mlflow = Path(sys.executable).with_name("mlflow")
    log_path = workdir / "mlflow.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(mlflow), "server",
                "--host", "127.0.0.1",
                "--port", "0",
                "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                "--default-artifact-root", str(workdir / "artifacts"),
                "--workers", "1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT * 2
        url = None
        while True:
            if url is None:
                found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
                url = found.group(1) if found else None
            if url is not None:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health:\n{log_path.read_text()}")
            time.sleep(0.1)  # poll interval, not a readiness guess
        yield url
    finally:
        stop(proc)
