"""Fixtures: a real modelreg-server process per test, and a Python client to it.

The server is the binary built by cargo (``MODELREG_SERVER_BIN``, default
``target/debug/modelreg-server`` of this repository) started on
``127.0.0.1:0`` with a fresh SQLite database in the test's temporary folder;
it picks its port itself and reports it in its ``--ready-file``, so no test
picks a port another process could take first. Readiness is that file, then
``grpc.health.v1.Health/Check`` answering SERVING, polled through the client;
there is no fixed sleep. A test can stop the process (SIGTERM or SIGKILL) and
start it again on the same port (the one the first start reported) and
database.
"""

from __future__ import annotations

import os
import signal
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


def read_ready_file(path: Path) -> Optional[dict]:
    """The ``key=value`` lines of a server's ready file (``grpc``, ``http``), or None before it exists."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields if "grpc" in fields else None


class ServerProcess:
    """One modelreg-server process that can be stopped and started again on the same database."""

    def __init__(self, binary: Path, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        #: Flags added to every start (e.g. ``--policy-interval``).
        self.extra_args = extra_args
        self.database = workdir / "registry.db"
        #: None until the first start reports the port it bound; kept for restarts.
        self.port: Optional[int] = None
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
        """Starts the server and returns once it answers SERVING.

        The first start listens on port 0; later starts on the port it reported."""
        assert self.proc is None, "already running"
        self.starts += 1
        # A new name per start: an old file must never pass for this start's.
        ready = self.workdir / f"server-{self.starts}.ready"
        listen = "127.0.0.1:0" if self.port is None else self.address
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "--listen",
                    listen,
                    "--ready-file",
                    str(ready),
                    "--database-url",
                    f"sqlite://{self.database}",
                    "--heartbeat-interval",
                    HEARTBEAT,
                    # Parallel servers must not fight over the /metrics port 8080.
                    "--http-listen",
                    "off",
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG": os.environ.get("RUST_LOG", "info")},
            )
        deadline = time.monotonic() + START_TIMEOUT
        self._wait_ready(ready, deadline)
        self._wait_serving(deadline)

    def _exited(self) -> None:
        """Raises if the process has exited."""
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.proc = None
            raise RuntimeError(f"modelreg-server exited with {code} while starting:\n{self.log()}")

    def _wait_ready(self, ready: Path, deadline: float) -> None:
        """Waits for the ready file and takes the gRPC port from it."""
        while time.monotonic() < deadline:
            fields = read_ready_file(ready)
            if fields is not None:
                port = int(fields["grpc"].rsplit(":", 1)[1])
                assert self.port in (None, port), f"restarted on {port}, not {self.port}"
                self.port = port
                return
            self._exited()
            time.sleep(0.02)  # poll interval, not a readiness guess
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"modelreg-server wrote no {ready} within {START_TIMEOUT}s:\n{self.log()}")

    def _wait_serving(self, deadline: float) -> None:
        last: object = None
        with modelreg_client.connect(self.address) as probe:
            while time.monotonic() < deadline:
                self._exited()
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


def cli_binary() -> Path:
    """The `modelreg` CLI under test: ``MODELREG_CLI_BIN``, or the one beside the server binary."""
    explicit = os.environ.get("MODELREG_CLI_BIN")
    binary = Path(explicit) if explicit else server_binary().with_name("modelreg")
    if not binary.is_file():
        pytest.fail(f"modelreg CLI not found at {binary}: run `cargo build --workspace --bins` or set MODELREG_CLI_BIN")
    return binary


def running_server(workdir: Path, *extra_args: str) -> Iterator[ServerProcess]:
    """Starts a server with a fresh database in ``workdir``; yields it and stops it."""
    binary = server_binary()
    if not binary.is_file():
        pytest.fail(
            f"modelreg-server binary not found at {binary}: run `cargo build -p modelreg-server` "
            "or set MODELREG_SERVER_BIN"
        )
    srv = ServerProcess(binary, workdir, extra_args)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server with a fresh database, stopped after the test."""
    yield from running_server(tmp_path)


@pytest.fixture
def registry(server: ServerProcess) -> Iterator[modelreg_client.RegistryClient]:
    """A client acting as `alice` (local mode: the actor header, no token)."""
    with modelreg_client.connect(server.address, actor="alice") as client:
        yield client
