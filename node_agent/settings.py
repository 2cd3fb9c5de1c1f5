"""RunnerSettings: the node agent's part of the TOML configuration.

The agent reads ``[network]`` (where the host is, whether it speaks TLS and the CA
fingerprint to pin, what address to report),
``[paths]``, ``[timing]``, ``[runner]``, ``[docker]`` and ``[vps]``; other keys are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from events.config import (
    DEFAULT_DATA_DIR,
    RunTasksAs,
    node_name,
    node_name_problem,
    tls_wanted,
)
from events.link import MAX_BATCH_EVENTS
from events.pinning import BadFingerprint, PinnedTrust, parse_fingerprint

Positive = Annotated[float, Meta(gt=0)]
EnvironmentName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class RunnerSettingsError(ValueError):
    """The configuration is invalid; the message names the key."""


class RunnerNetwork(Struct, kw_only=True, frozen=True):
    host_reachable_address: str = "127.0.0.1"
    host_port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    runner_address: str = "127.0.0.1"
    # Whether the host speaks TLS: the host's own rule (events.config.tls_wanted), so one
    # file copied from the host says it; and the pinned CA (events/pinning.py).
    host_bind_ip: str = "127.0.0.1"
    tls: Literal["auto"] | bool = "auto"
    tls_cert: str = ""
    ca_fingerprint: str = ""


class RunnerPaths(Struct, kw_only=True, frozen=True):
    shared_dir: str = "shared"
    local_temp_dir: str = "local_temp"
    numactl_path: str = ""


class RunnerTiming(Struct, kw_only=True, frozen=True):
    heartbeat_interval: Positive = 1.0
    kill_grace_period: Annotated[float, Meta(ge=0)] = 5.0
    reconnect_max_delay: Positive = 5.0


AGENT_TOKEN_FILE = "agent.token"


class RunnerSection(Struct, kw_only=True, frozen=True):
    name: str = ""  # empty: the machine's hostname
    state_dir: str = ""  # empty: <data_dir>/runner-<name>
    max_batch: Annotated[int, Meta(gt=0, le=MAX_BATCH_EVENTS)] = 1000  # the host's cap
    docker: bool = True  # use the Docker engine when one answers
    # "runner": tasks run as the runner's own user; "owner": as the Unix account named
    # like the task's owner on this node (node_agent/accounts.py; the runner must be root).
    run_tasks_as: RunTasksAs = "runner"
    # Variables of the runner's environment its process tasks inherit, beyond PATH, HOME,
    # USER, LOGNAME, LANG, LANGUAGE, TZ and LC_* (every other one stays the runner's).
    pass_environment: tuple[EnvironmentName, ...] = ()


class RunnerDocker(Struct, kw_only=True, frozen=True):
    container_dir: str = "hakuriver-containers"
    preload_tarballs: bool = True  # load a tarball as soon as it appears, not at the next task


class RunnerVps(Struct, kw_only=True, frozen=True):
    """``[vps]``: how the runner starts VPS containers (node_agent/executors/vps.py)."""

    # Install openssh from the image's package mirrors when it has no sshd (needs the
    # network at every start, and is slow): off, the VPS says it has no sshd and is
    # reached with ``hakuriver vps shell``.
    install_sshd: bool = False
    # How long the runner waits for a VPS's sshd to answer before reporting it not ready.
    ready_timeout: Positive = 60.0


class RunnerSettings(Struct, kw_only=True, frozen=True):
    """Everything a node agent reads from the configuration."""

    network: RunnerNetwork = RunnerNetwork()
    paths: RunnerPaths = RunnerPaths()
    timing: RunnerTiming = RunnerTiming()
    runner: RunnerSection = RunnerSection()
    docker: RunnerDocker = RunnerDocker()
    vps: RunnerVps = RunnerVps()
    data_dir: str = DEFAULT_DATA_DIR
    host_url: str = ""  # overrides [network]; e.g. HAKURIVER_URL

    @classmethod
    def from_mapping(
        cls,
        config: dict[str, Any],
        *,
        data_dir: str | None = None,
        name: str | None = None,
        host_url: str | None = None,
        ca_fingerprint: str | None = None,
    ) -> RunnerSettings:
        """Decode the runner's sections of a parsed TOML file; unknown keys are ignored.

        ``host_url`` and ``ca_fingerprint`` (``$HAKURIVER_URL``, ``$HAKURIVER_CA_FINGERPRINT``,
        options) override ``[network]``.
        """
        wanted: dict[str, Any] = {
            k: dict(v) for k, v in config.items() if k in _SECTIONS and isinstance(v, dict)
        }
        if data_dir is not None:
            wanted["data_dir"] = data_dir
        elif "data_dir" in config.get("paths", {}):
            wanted["data_dir"] = config["paths"]["data_dir"]
        if name:
            wanted.setdefault("runner", {})["name"] = name
        if host_url:
            wanted["host_url"] = host_url
        if ca_fingerprint:
            wanted.setdefault("network", {})["ca_fingerprint"] = ca_fingerprint
        try:
            settings = msgspec.convert(wanted, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise RunnerSettingsError(f"configuration: {exc}") from None
        if settings.network.ca_fingerprint:
            try:
                pin = parse_fingerprint(settings.network.ca_fingerprint)
            except BadFingerprint as exc:
                where = "the CA fingerprint given" if ca_fingerprint else "[network] ca_fingerprint"
                raise RunnerSettingsError(f"{where}: {exc}") from None
            network = msgspec.structs.replace(settings.network, ca_fingerprint=pin)
            settings = msgspec.structs.replace(settings, network=network)
        problem = node_name_problem(settings.node_name)
        if problem is not None:
            where = "--name" if name else "[runner] name (empty: this machine's hostname)"
            raise RunnerSettingsError(f"{where}: {problem}")
        return settings

    def run_tasks_as_problem(self, euid: int) -> str | None:
        """Why a runner running as ``euid`` cannot run tasks as configured; None if it can."""
        if self.runner.run_tasks_as == "owner" and euid != 0:
            return (
                '[runner] run_tasks_as = "owner": the runner must run as root to start'
                f" tasks as their owners' accounts (it runs as uid {euid})"
            )
        return None

    def path(self, value: str) -> Path:
        base = Path(self.data_dir).expanduser()
        return (base / Path(value).expanduser()).resolve()

    @property
    def node_name(self) -> str:
        """This node's name: ``[runner] name``, else the machine's short hostname."""
        return node_name(self.runner.name)

    @property
    def state_dir(self) -> Path:
        return self.path(self.runner.state_dir or f"runner-{self.node_name}")

    @property
    def agent_token_file(self) -> Path:
        """This runner's enrolled credential (``runner --join``), mode 0600."""
        return self.state_dir / AGENT_TOKEN_FILE

    @property
    def shared_dir(self) -> Path:
        return self.path(self.paths.shared_dir)

    @property
    def tarball_dir(self) -> Path:
        """Where the host puts environment tarballs: ``<shared_dir>/<container_dir>``."""
        return self.shared_dir / self.docker.container_dir

    @property
    def local_temp_dir(self) -> Path:
        return self.path(self.paths.local_temp_dir)

    @property
    def base_url(self) -> str:
        """The host's URL: ``host_url``, else ``[network]`` (https when the host speaks TLS)."""
        if self.host_url:
            return self.host_url.rstrip("/")
        network = self.network
        pinned = bool(network.ca_fingerprint)
        on = tls_wanted(
            network.tls, bind_ip=network.host_bind_ip, tls_cert=network.tls_cert, pinned=pinned
        )
        address = network.host_reachable_address
        address = f"[{address}]" if ":" in address else address
        return f"{'https' if on else 'http'}://{address}:{network.host_port}"

    @property
    def ws_url(self) -> str:
        base = self.base_url
        return base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + (
            "/api/agents/ws"
        )

    def pinned_trust(self) -> PinnedTrust | None:
        """How the link trusts the host: its pinned CA (kept in the state dir), if any.

        None for a plain ``ws://`` link, or ``wss://`` with the system's trust store.
        """
        parts = urlsplit(self.base_url)
        if parts.scheme != "https" or not self.network.ca_fingerprint or not parts.hostname:
            return None
        return PinnedTrust(
            parts.hostname,
            parts.port or 443,
            self.network.ca_fingerprint,
            prefix=parts.path,
            cache_dir=self.state_dir / "ca",
        )


_SECTIONS = {"network", "paths", "timing", "runner", "docker", "vps"}
