"""The first admin survives a crash at any point of its making (issue 13's first start,
found again in issue 14's review): the token file is written as ``.pending``, the user
and the token are recorded by two commits, then the file is renamed. A ``kill -9``
between the two commits left user ``admin`` with no token and the pending file deleted
at the next start: the cluster's administration locked for good."""

from __future__ import annotations

from pathlib import Path

from control_plane.access import HOST
from control_plane.bootstrap import ADMIN_USER, admin_token_path, ensure_admin
from control_plane.commands import CreateUser
from control_plane.hub import ControlPlane
from control_plane.settings import HostSettings
from events.credentials import make_token, parse_token, read_secret, write_secret


def settings_in(tmp_path: Path) -> HostSettings:
    return HostSettings.from_mapping(
        {"paths": {"shared_dir": str(tmp_path / "shared")}}, data_dir=str(tmp_path)
    )


async def test_a_crash_between_the_user_and_its_token_still_gives_the_admin_its_token(
    tmp_path: Path,
) -> None:
    # Given a first start killed after recording the user, before recording its token
    cp = await ControlPlane.open(settings_in(tmp_path))
    pending = admin_token_path(cp).with_name("admin.token.pending")
    made = make_token("user")
    write_secret(pending, made.text)
    await cp.execute(CreateUser(name=ADMIN_USER, role="admin", actor=HOST))
    await cp.close()
    # When the host starts again
    cp = await ControlPlane.open(settings_in(tmp_path))
    try:
        written = await ensure_admin(cp)
        # Then the pending token is recorded for admin and handed over in admin.token
        assert written == admin_token_path(cp) and not pending.exists()
        credential = parse_token(read_secret(written) or "")
        assert credential is not None and credential.id == made.id
        token = cp.state.identity.tokens[made.id]
        assert (token.user, token.sha256) == (ADMIN_USER, made.sha256)
        # And a later start changes nothing
        assert await ensure_admin(cp) is None
        assert list(cp.state.identity.tokens) == [made.id]
    finally:
        await cp.close()


async def test_a_pending_file_is_dropped_when_the_admin_already_has_a_token(
    tmp_path: Path,
) -> None:
    cp = await ControlPlane.open(settings_in(tmp_path))
    try:
        first = await ensure_admin(cp)
        assert first is not None
        # A stray pending token (not the admin's) is not recorded beside the real one
        stray = admin_token_path(cp).with_name("admin.token.pending")
        write_secret(stray, make_token("user").text)
        first.unlink()
        assert await ensure_admin(cp) is None
        assert not stray.exists() and len(cp.state.identity.tokens) == 1
    finally:
        await cp.close()
