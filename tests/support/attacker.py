"""An unprivileged local user, for the attacks of issue 14: a stdlib-only script run as
``nobody`` through ``setpriv``, with an interpreter that account can execute.

``nobody`` exists everywhere and owns nothing; becoming it needs root, so the tests that
use this skip when not root (or when no interpreter is reachable by it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from typing import Any

import pytest

NOBODY = pwd.getpwnam("nobody")


def as_nobody(argv: list[str]) -> list[str]:
    """``argv`` run as nobody (uid, gid, no supplementary groups)."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    return [
        setpriv,
        f"--reuid={NOBODY.pw_uid}",
        f"--regid={NOBODY.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


def nobody_python() -> str:
    """An interpreter nobody can run (the tests' own may live in root's home); skips if none."""
    if os.geteuid() != 0:
        pytest.skip("becoming another local user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        try:
            done = subprocess.run(
                as_nobody([candidate, "-I", "-c", "pass"]), capture_output=True, timeout=30
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that the account nobody may run")


def run_as_nobody(script: str, *args: str, timeout: float = 60) -> Any:
    """Run a Python ``script`` as nobody; the JSON it printed last."""
    done = subprocess.run(
        as_nobody([nobody_python(), "-I", "-c", script, *args]),
        capture_output=True,
        timeout=timeout,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# The attack of issue 14: find a zygote in /proc/net/unix (readable by anyone), connect, and
# ask it, in its old format and its new one, to run `id` into a file of our choosing.
# Arguments: the marker file, a folder for the records, the zygote's address (the abstract
# name it had before issue 14, or its socket file): other zygotes on the machine are spared.
ZYGOTE_ATTACK = r"""
import json, marshal, os, socket, sys
marker, attacker_dir, target = sys.argv[1], sys.argv[2], sys.argv[3]
spec = {
    "argv": ["/bin/sh", "-c", "id > " + marker], "env": {"PATH": "/usr/bin:/bin"},
    "cwd": "/", "stdout": "/dev/null", "stderr": "/dev/null", "cpus": [],
    "memory_bytes": None, "cgroup_parent": None, "systemd_cgroup": None,
    "uid": None, "gid": None, "groups": [],
}
body = json.dumps({"task_id": "x", "spec": spec}).encode()
requests = {
    "marshal": marshal.dumps((attacker_dir, "x", spec)),
    "json": len(body).to_bytes(4, "big") + body,
}
found = []
with open("/proc/net/unix") as table:
    for line in table.read().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7] in (target, "@" + target):
            found.append(parts[7])
results = {"found": found, "tries": {}}
for name in found:
    address = "\0" + name[1:] if name.startswith("@") else name
    for form, request in requests.items():
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        try:
            conn.connect(address)
        except OSError as exc:
            results["tries"][name + " " + form] = "connect: " + type(exc).__name__
            conn.close()
            continue
        answer = b""
        try:
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(4096):
                answer += chunk
        except OSError as exc:
            answer += ("<" + type(exc).__name__ + ">").encode()
        conn.close()
        results["tries"][name + " " + form] = "answered: " + answer.decode(errors="replace")
print(json.dumps(results))
"""
