"""HostSettings: the control plane's part of the TOML configuration.

The file has one section per concern (seed 001's keys); the host reads
``[network]``, ``[paths]``, ``[database]``, ``[timing]``, ``[scheduler]`` and
``[docker]``, and ignores keys it does not know (the runner's, future ones).
Paths may use ``~``; relative paths are taken from the data directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from events.config import DEFAULT_DATA_DIR, tls_wanted

Positive = Annotated[float, Meta(gt=0)]


class SettingsError(ValueError):
    """The configuration is invalid; the message names the key."""


class HostNetwork(Struct, kw_only=True, frozen=True):
    # Loopback until the API has authentication: it runs commands (docs/decisions.md).
    host_bind_ip: str = "127.0.0.1"
    host_port: Annotated[int, Meta(ge=0, le=65535)] = 8000
    host_reachable_address: str = "127.0.0.1"
    # HTTPS/WSS: "auto" is on beyond loopback or with tls_cert (events.config.tls_wanted).
    tls: Literal["auto"] | bool = "auto"
    tls_cert: str = ""  # empty: the host's own CA and certificate under <data_dir>/tls
    tls_key: str = ""
    tls_ca: str = ""  # the CA of tls_cert, served to clients that pin it (optional)
    # GET /api/events/stream: open streams per client (address and user) and in all, and
    # how long one write may wait for a subscriber that stopped reading (then it is dropped).
    event_streams_per_client: Annotated[int, Meta(gt=0)] = 8
    event_streams_total: Annotated[int, Meta(gt=0)] = 256
    event_stream_stall_s: Positive = 30.0
    # The SSH gateway to VPS tasks (control_plane/ssh_gateway.py): its port (0: any free
    # port, as the tests use), and the address it binds (empty: host_bind_ip).
    ssh_gateway: bool = True
    host_ssh_proxy_port: Annotated[int, Meta(ge=0, le=65535)] = 8002
    host_ssh_proxy_bind_ip: str = ""


class HostPaths(Struct, kw_only=True, frozen=True):
    shared_dir: str = "shared"
    local_temp_dir: str = "local_temp"


class HostDatabase(Struct, kw_only=True, frozen=True):
    db_file: str = "hakuriver.duckdb"
    snapshot_every_events: Annotated[int, Meta(ge=0)] = 50_000
    # User SQL (POST /api/sql): statements at once, seconds each, memory each (DuckDB size).
    sql_slots: Annotated[int, Meta(ge=1, le=16)] = 1
    sql_timeout: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    sql_memory: Annotated[
        str, Meta(pattern=r"^[0-9]+(\.[0-9]+)? ?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    ] = "512MB"


class HostTiming(Struct, kw_only=True, frozen=True):
    heartbeat_interval: Positive = 1.0
    heartbeat_timeout: Positive = 5.0
    kill_grace_period: Annotated[float, Meta(ge=0)] = 5.0
    # How long a task on a silent node stays ``unknown`` before it is given up (lost).
    lost_after: Positive = 86_400.0


class HostScheduler(Struct, kw_only=True, frozen=True):
    policy: Literal["first-fit", "least-loaded", "round-robin"] = "first-fit"


# The seeds' default environment: made from ``initial_base_image`` (pulled if missing) on
# a host whose Docker engine answers; ``NULL`` (plain processes) on one without an engine
# (control_plane/env_default.py, docs/decisions.md).
DEFAULT_ENVIRONMENT = "hakuriver-base"


class HostDocker(Struct, kw_only=True, frozen=True):
    container_dir: str = "hakuriver-containers"
    default_container_name: str = DEFAULT_ENVIRONMENT
    initial_base_image: str = "python:3.12-alpine"
    # The most one image pull may take (seconds): the default environment's at start and
    # create-container's; past it the pull is abandoned with an error naming the image.
    pull_timeout: Positive = 1800.0
    # How long a submission without --container waits for the default environment still
    # being made (a first pull) before a 503 says how far it got (seconds).
    default_wait: Positive = 20.0
    tasks_privileged: bool = False
    allow_privileged: bool = True  # False: --privileged is refused
    additional_mounts: list[str] = []  # given to container tasks that name no --mount
    allowed_mount_dirs: list[str] = []  # non-empty: --mount host paths must lie inside these


class HostJobs(Struct, kw_only=True, frozen=True):
    """``[jobs]``: job files (docs/jobs.md)."""

    # The most a job's workdir copy may hold (bytes, after unpacking).
    max_workdir_bytes: Annotated[int, Meta(gt=0)] = 100 << 20
    # A job that has waited this long (seconds) for its nodes gets them reserved: smaller
    # work no longer goes onto them (docs/decisions.md). 0: never reserve.
    reserve_after: Annotated[float, Meta(ge=0)] = 300.0


class HostAuth(Struct, kw_only=True, frozen=True):
    """``[auth]``: what users who are not admins may ask for (docs/security.md)."""

    user_privileged: bool = False  # true: users may run --privileged containers
    user_mount_dirs: list[str] = []  # folders beyond the shared storage users may --mount
    # Refused credentials: one auth.failed event per client address per window.
    failure_window_s: Positive = 60.0


class HostSettings(Struct, kw_only=True, frozen=True):
    """Everything the control plane reads from the configuration."""

    network: HostNetwork = HostNetwork()
    paths: HostPaths = HostPaths()
    database: HostDatabase = HostDatabase()
    timing: HostTiming = HostTiming()
    scheduler: HostScheduler = HostScheduler()
    docker: HostDocker = HostDocker()
    auth: HostAuth = HostAuth()
    jobs: HostJobs = HostJobs()
    data_dir: str = DEFAULT_DATA_DIR
    max_body_bytes: Annotated[int, Meta(gt=0)] = 1 << 20

    @classmethod
    def from_mapping(cls, config: dict[str, Any], *, data_dir: str | None = None) -> HostSettings:
        """Decode the host's sections of a parsed TOML file; unknown keys are ignored."""
        wanted = {k: v for k, v in config.items() if k in _SECTIONS}
        if data_dir is not None:
            wanted["data_dir"] = data_dir
        elif "data_dir" in config.get("paths", {}):
            wanted["data_dir"] = config["paths"]["data_dir"]
        try:
            settings = msgspec.convert(wanted, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise SettingsError(f"configuration: {exc}") from None
        _check_tls(settings.network)
        docker = settings.docker
        if docker.tasks_privileged and not docker.allow_privileged:
            raise SettingsError(
                "configuration: [docker] tasks_privileged = true contradicts"
                " allow_privileged = false"
            )
        for section, key in (
            ("docker", "additional_mounts"),
            ("docker", "allowed_mount_dirs"),
            ("auth", "user_mount_dirs"),
        ):
            for value in getattr(getattr(settings, section), key):
                if not value.startswith("/"):
                    raise SettingsError(
                        f"configuration: [{section}] {key}: {value!r} is not an absolute path"
                    )
        return settings

    def path(self, value: str) -> Path:
        """``value`` as an absolute path (``~`` expanded, relative to the data dir)."""
        base = Path(self.data_dir).expanduser()
        return (base / Path(value).expanduser()).resolve()

    @property
    def db_path(self) -> Path:
        return self.path(self.database.db_file)

    @property
    def shared_dir(self) -> Path:
        return self.path(self.paths.shared_dir)

    @property
    def tarball_dir(self) -> Path:
        """Where packaged environments live: ``<shared_dir>/<container_dir>``."""
        return self.shared_dir / self.docker.container_dir

    @property
    def tls_enabled(self) -> bool:
        """Whether the host serves HTTPS and WSS (``[network] tls``)."""
        network = self.network
        return tls_wanted(network.tls, bind_ip=network.host_bind_ip, tls_cert=network.tls_cert)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_enabled else "http"
        address = self.network.host_reachable_address
        address = f"[{address}]" if ":" in address else address
        return f"{scheme}://{address}:{self.network.host_port}"


def _check_tls(network: HostNetwork) -> None:
    """The TLS keys agree with each other; the message names the one to change."""
    if bool(network.tls_cert) != bool(network.tls_key):
        given, missing = ("tls_cert", "tls_key") if network.tls_cert else ("tls_key", "tls_cert")
        raise SettingsError(f"configuration: [network] {given} is set but {missing} is not")
    if network.tls_ca and not network.tls_cert:
        raise SettingsError(
            "configuration: [network] tls_ca names the CA of tls_cert, which is not set"
        )
    if network.tls is False and network.tls_cert:
        raise SettingsError("configuration: [network] tls = false contradicts tls_cert")


_SECTIONS = {"network", "paths", "database", "timing", "scheduler", "docker", "auth", "jobs"}
