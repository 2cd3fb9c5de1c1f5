"""A real OpenSSH client for the VPS tests: a throwaway key, and ``ssh`` straight to the port
a runner published (no gateway). Built on ``support.sshd.SshClient`` (its own config, key
and known_hosts: nothing of the user's ``~/.ssh`` is read)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from support.sshd import SshClient as _Client
from support.sshd import make_key


class SshClient(_Client):
    """An ed25519 key made for one test (``comment`` on its public line)."""

    def __init__(self, folder: Path, comment: str = "vps-test") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder / "id_ed25519"
        if not key.exists():
            make_key(key, comment)
        super().__init__(folder, key)

    @property
    def public_key(self) -> str:
        """The ``authorized_keys`` line of the key (its comment included), as written."""
        return self.key.with_suffix(".pub").read_text()

    def argv(self, address: str, port: int, *command: str) -> list[str]:
        """``ssh`` as root straight to ``address:port`` (a fresh VPS has a fresh host key)."""
        return [
            "ssh", "-F", str(self.config), "-p", str(port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"root@{address}", "--", *command,
        ]  # fmt: skip

    async def run(
        self, address: str, port: int, *command: str, timeout_s: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the VPS over SSH (off the event loop)."""
        return await asyncio.to_thread(
            subprocess.run,
            self.argv(address, port, *command),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
