"""``hakuriver host`` and ``up`` stop on SIGINT/SIGTERM whenever the signal arrives once
they serve, including while their after_server_start listeners run (serve.stop_on_signal).

CI once saw a host that answered its health check and then ignored the SIGTERM sent
right after: Sanic's handler stops the loop, and a stop made while the listeners' run
is ending is used up by that run. The fixture sends the signal at that very moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

FIXTURE = Path(__file__).parent / "fixtures" / "late_signal.py"
ROOT = Path(__file__).resolve().parents[2]


def _start(which: str, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, str(FIXTURE), which, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _lines_until(process: subprocess.Popen[str], marker: str, deadline_s: float) -> list[str]:
    assert process.stdout is not None
    seen: list[str] = []
    give_up = time.monotonic() + deadline_s
    while time.monotonic() < give_up:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"no {marker!r} within {deadline_s}s:\n{''.join(seen)}")


@pytest.mark.parametrize("which", ["TERM", "INT"])
def test_a_signal_during_the_start_listeners_stops_the_server(which: str) -> None:
    process = _start(which, "ours")
    try:
        output = process.communicate(timeout=30)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    lines = output.splitlines()
    # It served (started), then stopped through the graceful path, then run() returned.
    assert lines.index("started") < lines.index("stopped") < lines.index("exited"), output


def test_sanics_own_handler_loses_that_signal() -> None:
    """Why stop_on_signal exists: if this fails, Sanic fixed it and the shim can go."""
    process = _start("TERM", "sanic")
    try:
        _lines_until(process, "Worker ready", 30)
        # Serving, with the SIGTERM already delivered: it does not stop by itself.
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
