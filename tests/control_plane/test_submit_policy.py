"""What a user who is not an admin may ask of a node at submission (pure decisions).

A user may mount only the shared data folder (what their containers see as ``/shared``)
and what ``[auth] user_mount_dirs`` grants, run privileged containers only where
``[auth] user_privileged`` allows, and submit only as themselves; an admin may do all of
it. Refusals are 403s naming the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.decisions import context, principal

from control_plane.access import Principal
from control_plane.commands import SubmitTasks
from control_plane.commands.submit import decide_submission
from control_plane.errors import Refused
from control_plane.requests import SubmitTask
from control_plane.settings import HostAuth, HostSettings
from projections.cluster import ClusterState

USER = principal("bob")
ADMIN = principal("root-of-the-lab", "admin")


def settings(tmp: Path, **auth: object) -> HostSettings:
    return HostSettings(data_dir=str(tmp), auth=HostAuth(**auth))  # type: ignore[arg-type]


def decide(
    host: HostSettings, who: Principal, *requests: dict[str, object]
) -> list[tuple[str, object]]:
    """The submitted tasks' (owner, mounts), or the refusal raised."""
    command = SubmitTasks(
        requests=tuple(
            SubmitTask(**{"command": "true", "container": "env", **r})  # type: ignore[arg-type]
            for r in requests
        ),
        batch_id="b",
        actor=who,
    )
    decision = decide_submission(ClusterState(), command, context(settings=host))
    return [(e.spec.owner, e.spec.mounts) for e in decision.submitted]


@pytest.mark.parametrize(
    "host_path",
    [
        "/",
        "/etc",
        "/var/run/docker.sock",
        "{shared}",  # the whole shared directory: every task's output, the tarballs
        "{shared}/task_outputs",
        "{shared}/hakuriver-containers",
        "{shared}/shared_data/../task_errors",
        "{shared}/shared_data_not_really",
    ],
)
def test_a_user_may_not_mount_outside_the_shared_data_folder(
    tmp_path: Path, host_path: str
) -> None:
    host = settings(tmp_path)
    path = host_path.format(shared=host.shared_dir)
    with pytest.raises(Refused) as refused:
        decide(host, USER, {"mounts": [f"{path}:/x"]})
    assert refused.value.field == "mounts[0]"
    assert refused.value.status == 403
    assert "admin" in refused.value.message and path in refused.value.message
    # An admin may (the host's [docker] allowed_mount_dirs aside, which bind everyone).
    [(owner, mounts)] = decide(host, ADMIN, {"mounts": [f"{path}:/x"]})
    assert owner == ADMIN.user and mounts[0].host_path == path  # type: ignore[index]


def test_a_user_may_mount_the_shared_data_folder_and_what_auth_grants(tmp_path: Path) -> None:
    granted = tmp_path / "datasets"
    host = settings(tmp_path, user_mount_dirs=[str(granted)])
    data = host.shared_dir / "shared_data"
    [(owner, mounts)] = decide(
        host, USER, {"mounts": [f"{data}:/a", f"{data}/run1:/b:ro", f"{granted}/imagenet:/c"]}
    )
    assert owner == "bob"
    assert [m.host_path for m in mounts] == [  # type: ignore[attr-defined]
        str(data),
        f"{data}/run1",
        f"{granted}/imagenet",
    ]


def test_a_refused_mount_in_a_batch_refuses_the_whole_batch_naming_the_task(
    tmp_path: Path,
) -> None:
    host = settings(tmp_path)
    with pytest.raises(Refused) as refused:
        decide(host, USER, {}, {"mounts": ["/:/host"]})
    assert refused.value.field == "tasks[1].mounts[0]"


def test_privileged_containers_need_an_admin_unless_auth_allows_users(tmp_path: Path) -> None:
    with pytest.raises(Refused) as refused:
        decide(settings(tmp_path), USER, {"privileged": True})
    assert refused.value.field == "privileged" and "admin" in refused.value.message
    assert decide(settings(tmp_path), ADMIN, {"privileged": True})
    assert decide(settings(tmp_path, user_privileged=True), USER, {"privileged": True})


def test_a_user_submits_as_themselves_only(tmp_path: Path) -> None:
    host = settings(tmp_path)
    with pytest.raises(Refused) as refused:
        decide(host, USER, {"owner": "carol"})
    assert refused.value.field == "owner"
    assert decide(host, USER, {"owner": "bob"}) == [("bob", ())]
    assert decide(host, ADMIN, {"owner": "carol"}) == [("carol", ())]
