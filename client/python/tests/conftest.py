"""Fixtures: a real modelreg-server process per test, and a Python client to it.

The server is the binary built by cargo (``MODELREG_SERVER_BIN``, default
``target/debug/modelreg-server`` of this repository) started on a free
loopback port with a fresh SQLite database in the test's temporary folder.
Readiness is ``grpc.health.v1.Health/Check`` answering SERVING, polled
through the client; there is no fixed sleep. A test can stop the process
(SIGTERM or SIGKILL) and start it again on the same port and database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import grpc
import pytest

import modelreg_client

REPO = Path(__file__).resolve().parents[3]
#: How long a server may take to start answering SERVING.
START_TIMEOUT = 30.0
#: Heartbeats every second keep watch tests short.
HEARTBEAT = "1s"


def server_binary() -> Path:
    """The modelreg-server binary under test."""
    explicit = os.environ.get("MODELREG_SERVER_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "modelreg-server"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One modelreg-server process that can be stopped and started again on the same database."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.database = workdir / "registry.db"
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def address(self) -> str:
        """``host:port`` to connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def log(self) -> str:
        """The output of the current (or last) run, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Starts the server and returns once it answers SERVING."""
        assert self.proc is None, "already running"
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--listen",
                    self.address,
                    "--database-url",
                    f"sqlite://{self.database}",
                    "--heartbeat-interval",
                    HEARTBEAT,
                    # Parallel servers must not fight over the /metrics port 8080.
                    "--http-listen",
                    "off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "info")},
            )
        self._wait_serving()

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        with modelreg_client.connect(self.address) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    self.proc = None
                    raise RuntimeError(f"modelreg-server exited with {code} while starting:\n{self.log()}")
                try:
                    last = probe.health(timeout=1.0)
                    if last == modelreg_client.ServingStatus.SERVING:
                        return
                except grpc.RpcError as err:
                    last = err.code()
                time.sleep(0.02)  # poll interval, not a readiness guess
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"modelreg-server not SERVING after {START_TIMEOUT}s (last: {last}):\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Sends ``sig`` and waits for the process to exit; returns its exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"modelreg-server ignored signal {sig} for {timeout}s:\n{self.log()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server with a fresh database, stopped after the test."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(
            f"modelreg-server binary not found at {binary}: run `cargo build -p modelreg-server` "
            "or set MODELREG_SERVER_BIN"
        )
    srv = ServerProcess(binary, tmp_path)
    for attempt in range(3):
        try:
            srv.start()
            break
        except RuntimeError:
            # Another process may have taken the free port between the pick and the bind.
            if attempt == 2:
                raise
            srv.port = free_port()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def registry(server: ServerProcess) -> Iterator[modelreg_client.RegistryClient]:
    """A client acting as `alice` (local mode: the actor header, no token)."""
    with modelreg_client.connect(server.address, actor="alice") as client:
        yield client
