"""Finding and reading the TOML configuration shared by every command.

Where it comes from, first match wins: ``--config FILE``, ``$HAKURIVER_CONFIG``,
``~/.hakuriver/config.toml``. A missing default file means "all defaults"; a file
named explicitly must exist. ``$HAKURIVER_URL`` overrides the host address for
clients and runners, ``$HAKURIVER_CA_FINGERPRINT`` the host's pinned certificate
authority (``[network] ca_fingerprint``; events/pinning.py).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("~/.hakuriver/config.toml")

DEFAULT_CONFIG = """\
# HakuRiver configuration. Every command reads it: --config FILE, $HAKURIVER_CONFIG,
# or ~/.hakuriver/config.toml. Relative paths are taken from [paths] data_dir.

[network]
# Where the control plane listens: loopback (this machine only), or this host's address
# (or "0.0.0.0": every interface) so runners on other machines can connect. Every request
# needs a token (docs/security.md); beyond loopback the host serves HTTPS with its own CA.
host_bind_ip = "127.0.0.1"
host_port = 8000
host_reachable_address = "127.0.0.1"  # how runners and clients reach the host
runner_address = "127.0.0.1"      # how this runner is reported (unique per runner)
tls = "auto"                      # HTTPS/WSS: "auto" = on when host_bind_ip is not loopback
ca_fingerprint = ""               # clients, runners: the host's CA, as `hakuriver host` prints it
# tls_cert = "", tls_key = "", tls_ca = ""   # host: a certificate of your own instead

[paths]
data_dir = "~/.hakuriver"         # the host's database and the runners' state live here
shared_dir = "shared"             # shared storage: task logs, container tarballs, /shared
local_temp_dir = "local_temp"     # node-local scratch, /local_temp in containers
numactl_path = ""                 # empty: found on PATH when needed

[database]
db_file = "hakuriver.duckdb"      # the event log (DuckDB), relative to data_dir
snapshot_every_events = 50000

[timing]
heartbeat_interval = 1.0          # seconds between runner heartbeats
heartbeat_timeout = 5.0           # a runner silent this long is offline; its tasks are lost
kill_grace_period = 5.0           # SIGTERM, then SIGKILL after this many seconds

[scheduler]
policy = "first-fit"              # first-fit | least-loaded | round-robin

[runner]
name = ""                         # empty: this machine's hostname
state_dir = ""                    # empty: <data_dir>/runner-<name>
run_tasks_as = "runner"           # "owner": tasks run as their owner's account (runner as root)
pass_environment = []             # runner variables tasks also get (beyond PATH, HOME, LANG...)

[docker]
container_dir = "hakuriver-containers"  # environment tarballs, under shared_dir
default_container_name = "hakuriver-base"  # tasks without --container; NULL: plain processes
                                  # (hakuriver-base becomes NULL where the host has no Docker)
initial_base_image = "python:3.12-alpine"  # the default environment is made from it (pulled)
pull_timeout = 1800               # host: the most one image pull may take (seconds)
default_wait = 20                 # host: a submission's wait for the default environment
                                  # being made, then 503 with its progress (seconds)
tasks_privileged = false          # --privileged for tasks that do not say
allow_privileged = true           # false: --privileged is refused
allowed_mount_dirs = []           # non-empty: --mount host paths must lie inside these
additional_mounts = []            # host: "HOST:CONTAINER[:ro]" for container tasks without --mount
preload_tarballs = true           # runner: load a new tarball as soon as it appears

[logging]
format = "human"                  # human | json (one JSON object a line)
level = "INFO"                    # DEBUG | INFO | WARNING | ERROR
file = ""                         # empty: stderr; a path: a file rotated by size
max_bytes = 10485760              # rotate past this size; keep `backups` old files
backups = 5
"""


class ConfigError(Exception):
    """The configuration file is missing or invalid; the message says which and why."""


def config_path(explicit: str | os.PathLike[str] | None = None) -> tuple[Path, bool]:
    """The file to read, and whether the user named it (so it must exist)."""
    if explicit:
        return Path(explicit).expanduser(), True
    env = os.environ.get("HAKURIVER_CONFIG")
    if env:
        return Path(env).expanduser(), True
    return DEFAULT_PATH.expanduser(), False


def load_config(explicit: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The parsed configuration ({} when the default file does not exist)."""
    path, named = config_path(explicit)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if named:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def host_url(config: dict[str, Any]) -> str:
    """The control plane's base URL: ``$HAKURIVER_URL`` or the ``[network]`` keys.

    ``https`` when the host speaks TLS by the host's own rule (events.config.tls_wanted)
    read from the same keys, or when a CA fingerprint is pinned.
    """
    from events.config import tls_wanted

    env = os.environ.get("HAKURIVER_URL")
    if env:
        return env.rstrip("/")
    network = config.get("network", {})
    address = str(network.get("host_reachable_address", "127.0.0.1"))
    port = network.get("host_port", 8000)
    tls = network.get("tls", "auto")
    on = tls_wanted(
        tls if isinstance(tls, bool) else "auto",
        bind_ip=str(network.get("host_bind_ip", "127.0.0.1")),
        tls_cert=str(network.get("tls_cert", "")),
        pinned=ca_fingerprint(config) is not None,
    )
    address = f"[{address}]" if ":" in address else address
    return f"{'https' if on else 'http'}://{address}:{port}"


def ca_fingerprint(config: dict[str, Any]) -> str | None:
    """The host's pinned CA: ``$HAKURIVER_CA_FINGERPRINT`` or ``[network] ca_fingerprint``."""
    env = os.environ.get("HAKURIVER_CA_FINGERPRINT", "").strip()
    text = env or str(config.get("network", {}).get("ca_fingerprint", "") or "").strip()
    if not text:
        return None
    from events.pinning import BadFingerprint, parse_fingerprint

    try:
        return parse_fingerprint(text)
    except BadFingerprint as exc:
        where = "$HAKURIVER_CA_FINGERPRINT" if env else "[network] ca_fingerprint"
        raise ConfigError(f"{where}: {exc}") from None


def write_default(path: Path, *, force: bool = False) -> Path:
    """Write the commented default configuration; refuse to overwrite unless ``force``."""
    path = path.expanduser()
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEFAULT_CONFIG)
    return path
