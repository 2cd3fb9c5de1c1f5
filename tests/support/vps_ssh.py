"""A real OpenSSH client for the VPS tests: a throwaway key, and ``ssh`` as a subprocess."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SshClient:
    """An ed25519 key made for one test, and a known_hosts file of its own."""

    folder: Path
    comment: str = "vps-test"

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = self.folder / "id_ed25519"
        if not self.key.exists():
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    self.comment,
                    "-f",
                    str(self.key),
                ],
                check=True,
            )
        self.known_hosts = self.folder / "known_hosts"

    @property
    def public_key(self) -> str:
        """The ``authorized_keys`` line of the key (its comment included)."""
        return (self.folder / "id_ed25519.pub").read_text()

    def argv(self, address: str, port: int, *command: str) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=no",  # a fresh VPS has a fresh host key
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            f"root@{address}",
            "--",
            *command,
        ]

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
        )
