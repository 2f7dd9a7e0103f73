"""The Python example of the "Clients in other languages" section runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from modelreg_client import pb

REPO = Path(__file__).resolve().parents[3]
BEGIN = "<!-- python-example:begin -->"
END = "<!-- python-example:end -->"
DOC_ADDRESS = "127.0.0.1:50051"


def documented_example() -> tuple[Path, str]:
    """The ```python block between the markers of README.md."""
    for path in (REPO / "README.md",):
        text = path.read_text() if path.is_file() else ""
        if BEGIN in text and END in text:
            section = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
            blocks = re.findall(r"^```python[ \t]*\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
            assert len(blocks) == 1, f"{path}: expected one python block between the markers"
            return path, blocks[0]
    raise AssertionError("no python example between markers in README.md")


def test_documented_python_example_runs_against_a_real_server(server, registry):
    """The README's Python example, run verbatim but for the address, registers a version, has its promotion
    approved by a second person, and prints exactly the replayed event log up to the first heartbeat."""
    path, code = documented_example()
    assert DOC_ADDRESS in code
    assert len(code.strip().splitlines()) <= 15, "the example is meant to stay about ten lines"

    run = subprocess.run(
        [sys.executable, "-c", code.replace(DOC_ADDRESS, server.address)],
        capture_output=True, text=True, timeout=60,
    )

    assert run.returncode == 0, f"{path.name} example failed:\n{run.stdout}\n{run.stderr}"
    printed = [line.split() for line in run.stdout.splitlines()]
    logged = list(registry.list_events())
    assert [int(fields[0]) for fields in printed] == [e.sequence for e in logged]
    assert [fields[1] for fields in printed] == [pb.EventType.Name(e.type) for e in logged]
    assert printed[-1][1:] == ["EVENT_TYPE_STAGE_CHANGED", "STAGE_PRODUCTION"]
    assert registry.get_model(logged[0].model).production_version == 1
