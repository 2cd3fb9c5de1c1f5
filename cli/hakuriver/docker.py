"""``hakuriver docker ...`` and ``hakuriver docker-shell``: the host's environments.

An environment is a container on the host that you change interactively
(``docker-shell``) and package into a versioned tarball (``create-tar``) that every
runner loads before its next task in that environment (docs/environments.md).
"""

from __future__ import annotations

from typing import Any, Literal

from cyclopts import App
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from cli.hakuriver.invocation import (
    EXIT_FAILED,
    Connection,
    JsonFlag,
    connection,
    fail,
    note,
    print_json,
    reported,
    say,
    show,
)
from cli.hakuriver.output import printable_doc
from cli.hakuriver.render import escaped, human_size, human_time

docker_app = App(
    name="docker",
    help="Environments: containers on the host, packaged as tarballs every runner loads.",
)


def install(app: App) -> None:
    """Add ``hakuriver docker ...`` and ``docker-shell`` to ``app``."""
    app.command(docker_app)
    app.command(docker_shell, name="docker-shell")


@escaped
def _container_table(containers: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATUS", "FROM IMAGE", "CONTAINER", "CREATED"):
        table.add_column(column)
    for c in containers:
        table.add_row(c["name"], c["status"], c["image"], c["container"], human_time(c["created"]))
    return table


@docker_app.command(name="list-containers")
@reported
def list_containers(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the environment containers on the host.

    Parameters
    ----------
    as_json
        Print ``{"containers": [...]}``.
    """
    with connection(conn).client() as client:
        containers = client.env_containers()
    if as_json:
        print_json({"containers": containers})
    elif containers:
        show(_container_table(containers))
    else:
        note("no environment containers (create one: hakuriver docker create-container IMAGE NAME)")
    return 0


@docker_app.command(name="create-container")
@reported
def create_container(
    image: str, name: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Create (and start) a persistent environment container on the host from an image.

    The host pulls the image if its Docker engine lacks it; the pull's progress is shown
    as it happens (the host does the pull: this command only watches).

    Parameters
    ----------
    image
        An image reference (``python:3.12-slim``, ``registry.lab:5000/team/env:1``).
    name
        The environment's name: lowercase letters and digits joined by '.', '_' or '-'.
    as_json
        Print the container's document (and no progress bar).
    """
    created: dict[str, Any] = {}
    with connection(conn).client() as client:
        steps = client.env_create_progress(image, name)
        if as_json:
            for step in steps:
                created = step.get("container", created)
            print_json(created)
            return 0
        pulled = False
        with _transfer_bar() as bar:
            work = bar.add_task(f"creating {name}", total=None)
            drawn = bar.console.is_terminal  # else (a log, a pipe): a line per layer done
            said = ""
            for step in steps:
                if step.get("step") == "pull":
                    pulled = True
                    layers = f"{step.get('layers_done', 0)}/{step.get('layers', 0)} layers"
                    if not drawn and layers != said:
                        got = human_size(step.get("bytes", 0))
                        total = human_size(step.get("total", 0))
                        note(f"pulling {image}: {layers}, {got} of {total}")
                        said = layers
                    bar.update(
                        work,
                        description=f"pulling {image} ({layers})",
                        completed=step.get("bytes", 0),
                        total=step.get("total") or None,
                    )
                elif step.get("step") == "done":
                    created = step["container"]
    if "container" not in created:  # the answer ended early (a host stopped mid-way)
        return fail(
            f"the host's answer ended before environment {name} was created; see"
            " `hakuriver docker list-containers`",
            EXIT_FAILED,
        )
    if pulled:
        say(f"pulled {image} onto the host")
    say(f"created environment {name} from {image} ({created['container']}, running)")
    note(
        f"change it: hakuriver docker-shell {name}; package it: hakuriver docker create-tar {name}"
    )
    return 0


def _act(
    name: str, action: Literal["start", "stop"], conn: Connection | None, as_json: bool
) -> int:
    with connection(conn).client() as client:
        result = client.env_action(name, action)
    if as_json:
        print_json(result)
    else:
        say(f"environment {name}: {result['status']}")
    return 0


@docker_app.command(name="start-container")
@reported
def start_container(
    name: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Start an environment container that is stopped."""
    return _act(name, "start", conn, as_json)


@docker_app.command(name="stop-container")
@reported
def stop_container(
    name: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None
) -> int:
    """Stop an environment container (its changes are kept)."""
    return _act(name, "stop", conn, as_json)


@docker_app.command(name="delete-container")
@reported
def delete_container(name: str, /, *, conn: Connection | None = None) -> int:
    """Delete an environment container from the host (its tarballs stay)."""
    with connection(conn).client() as client:
        client.env_delete(name)
    say(f"deleted environment container {name} (its tarballs stay)")
    return 0


@docker_app.command(name="create-tar")
@reported
def create_tar(name: str, /, *, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """Commit the environment container and package it as a tarball for every runner.

    Parameters
    ----------
    name
        The environment.
    as_json
        Print the ``env.packaged`` event instead of a progress bar.
    """
    packaged: dict[str, Any] = {}
    with connection(conn).client() as client:
        if as_json:
            for step in client.env_package(name):
                packaged = step.get("packaged", packaged)
            print_json(packaged)
            return 0
        with _transfer_bar() as bar:
            saving = bar.add_task(f"committing {name}", total=None)
            for step in client.env_package(name):
                kind = step.get("step")
                if kind == "save":
                    total = step.get("total") or None
                    bar.update(
                        saving,
                        description=f"saving {name}",
                        completed=step.get("bytes", 0),
                        total=total,
                    )
                elif kind == "prune":
                    bar.update(saving, description="pruning older tarballs")
                elif kind == "done":
                    packaged = step["packaged"]
    say(
        f"packaged {name}: {packaged['tarball']} ({human_size(packaged['size_bytes'])},"
        f" sha256 {packaged['sha256'][:16]}…)"
    )
    return 0


@docker_app.command(name="list-tars")
@reported
def list_tars(*, as_json: JsonFlag = False, conn: Connection | None = None) -> int:
    """List the packaged environments (tarballs) in shared storage.

    Parameters
    ----------
    as_json
        Print ``{"folder": ..., "tarballs": [...]}``.
    """
    with connection(conn).client() as client:
        listing = client.env_tarballs()
    tarballs = listing["tarballs"]
    if as_json:
        print_json(listing)
        return 0
    if not tarballs:
        note(f"no tarballs in {listing['folder']} (package one: hakuriver docker create-tar NAME)")
        return 0
    tarballs = printable_doc(tarballs)
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "PACKAGED", "SIZE", "SHA256", "FILE"):
        table.add_column(column)
    for t in tarballs:
        table.add_row(
            t["name"] + ("" if t["newest"] else " (older)"),
            _stamp(t["timestamp"]),
            human_size(t["size_bytes"]),
            (t["sha256"][:16] + "…") if t["sha256"] else "(no digest)",
            t["file"],
        )
    show(table)
    return 0


@docker_app.command(name="shell")
@reported
def shell(name: str, /, *, conn: Connection | None = None) -> int:
    """Open an interactive shell in the environment container (same as docker-shell)."""
    return _shell(name, conn)


@reported
def docker_shell(name: str, /, *, conn: Connection | None = None) -> int:
    """Open an interactive shell in an environment container on the host.

    Install software, edit files, then ``exit`` and package it with
    ``hakuriver docker create-tar NAME``. The exit code is the shell's.

    Parameters
    ----------
    name
        The environment.
    """
    return _shell(name, conn)


def _shell(name: str, conn: Connection | None) -> int:
    from urllib.parse import quote

    from cli.hakuriver.shell import run_shell

    with connection(conn).client() as client:
        url = client.ws_url(f"/api/environments/{quote(name, safe='')}/shell")
        context = client.ws_ssl()
        pin = client.ca_fingerprint
        token = client.token
    return run_shell(url, token=token, ssl_context=context, ca_fingerprint=pin)


def _stamp(timestamp: int) -> str:
    from datetime import UTC, datetime

    return human_time(datetime.fromtimestamp(timestamp, UTC).isoformat(), short=False)


def _transfer_bar() -> Progress:
    """The bar of a pull or a save: what, how far, how much, how fast, how long."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
