"""The machine's own OpenSSH for tests: a real ``sshd`` on a loopback port, and the client.

``Sshd`` runs ``/usr/sbin/sshd -D`` as a child process with a configuration, host key and
``authorized_keys`` of its own in a temporary folder, on a free loopback port: it stands
in for a VPS task's container. ``SshClient`` runs the real ``ssh`` and ``scp`` with a
configuration file of their own (``-F``: a ``ProxyJump`` hop reads it too), its own key,
``BatchMode`` and a known_hosts file the test fills: nothing of the user's ``~/.ssh`` is
read or written.

Without OpenSSH the tests that need it are skipped with the reason, unless
``HAKURIVER_REQUIRE_SSH=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.waiting import wait_until

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd run as root insists on it


def require_openssh() -> None:
    """Skip (or, with HAKURIVER_REQUIRE_SSH=1, fail) unless sshd, ssh and scp are here."""
    missing = [str(SSHD)] if not os.access(SSHD, os.X_OK) else []
    missing += [tool for tool in ("ssh", "scp", "ssh-keygen") if shutil.which(tool) is None]
    if not missing:
        return
    message = f"OpenSSH is not installed here ({', '.join(missing)} missing)"
    if os.environ.get("HAKURIVER_REQUIRE_SSH") == "1":
        pytest.fail(f"{message}, and HAKURIVER_REQUIRE_SSH=1 requires it")
    pytest.skip(message)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_key(path: Path, comment: str = "hakuriver-test") -> str:
    """A new ed25519 key pair at ``path`` (no passphrase); its public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def public_key_line(line: str) -> str:
    """``type base64`` of a public key line (its comment left out)."""
    kind, blob = line.split()[:2]
    return f"{kind} {blob}"


class Sshd:
    """A real sshd on ``127.0.0.1:port``, logging in ``user`` (this process's) by key."""

    def __init__(self, root: Path, authorized: list[str]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key_file = root / "host_ed25519"
        self.host_key = public_key_line(make_key(self.host_key_file, "vps-host"))
        self.authorized_keys = root / "authorized_keys"
        self.authorized_keys.write_text("".join(f"{line}\n" for line in authorized))
        os.chmod(self.authorized_keys, 0o600)
        self.log = root / "sshd.log"
        self.config = root / "sshd_config"
        self.config.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key_file}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {self.authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        """Start it and wait until it answers with its SSH banner."""
        if os.geteuid() == 0 and not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
        )
        log.close()
        wait_until(self._answers, timeout=20, interval=0.02)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"sshd exited ({self.process.returncode}):\n{self.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def logs(self) -> str:
        """The tail of sshd's own log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        """Stop it (its sessions end with it: sshd -D is their parent's parent)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@contextlib.contextmanager
def running_sshd(root: Path, authorized: list[str]) -> Iterator[Sshd]:
    """A started ``Sshd``, stopped afterwards."""
    sshd = Sshd(root, authorized).start()
    try:
        yield sshd
    finally:
        sshd.stop()


class SshClient:
    """The OpenSSH client with a key, a known_hosts file and a configuration of its own."""

    def __init__(self, root: Path, key: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.key = key
        self.known_hosts = root / "known_hosts"
        self.known_hosts.touch()
        self.config = root / "ssh_config"
        self.config.write_text(
            f"""Host *
    IdentityFile {key}
    IdentitiesOnly yes
    IdentityAgent none
    BatchMode yes
    UserKnownHostsFile {self.known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    UpdateHostKeys no
    ConnectTimeout 10
    ServerAliveInterval 5
    LogLevel INFO
"""
        )

    def trust(self, pattern: str, key_line: str) -> None:
        """Trust ``key_line`` for hosts matching ``pattern`` (``[127.0.0.1]:2222``, ``*``)."""
        with self.known_hosts.open("a") as out:
            out.write(f"{pattern} {public_key_line(key_line)}\n")

    def ssh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ssh -F <own config> ARGS``; its exit status and output."""
        return subprocess.run(
            ["ssh", "-F", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def scp(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``scp -F <own config> ARGS``."""
        return subprocess.run(
            ["scp", "-q", "-F", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start_ssh(self, *args: str) -> subprocess.Popen[str]:
        """``ssh`` left running (a session the test ends some other way)."""
        return subprocess.Popen(
            ["ssh", "-F", str(self.config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
