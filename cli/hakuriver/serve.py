"""Running the long-lived parts: the control plane, a node agent, or both (``up``).

``run_host`` serves the Sanic app in this process (single process: DuckDB has one
writer and the state lives in memory). ``run_runner`` runs a node agent on the
default asyncio loop (never uvloop: see node_agent.agent). ``run_up`` is a whole
single-machine cluster: the control plane here, one agent as a child process,
both stopped cleanly by Ctrl-C. The agent ends with its ``up`` however that ends
(``kill -9`` too): a pipe is its lifeline (see ``run_runner``), so a crashed ``up``
never leaves a runner behind to compete with the next one's.

Before Sanic starts, the host claims its event log and its port (claims.py): a
second host on the same data directory or port ends in one line naming the holder,
with exit code 2. Then, with ``[network] tls`` on, it makes or loads its TLS material
(control_plane/tls.py) and says the fingerprint clients pin.

``python -m cli.hakuriver.serve host|runner [--config F] [--data-dir D] [--name N]``
is the same without the CLI around it (``up`` uses it for its agent).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from cli.hakuriver import leaving
from cli.hakuriver.claims import (
    ClaimRefused,
    LogLock,
    duckdb_lock_message,
    interface_urls,
    is_wildcard,
    listen,
    local_url,
    url_of,
)
from cli.hakuriver.config import ConfigError, load_config
from events.config import DEFAULT_DATA_DIR, node_name

EXIT_USAGE = 2
# How long the runner of an ``up`` waits for the runner of a previous ``up`` (which may
# have crashed: its runner sees that and stops by itself) to let go of the state dir.
UP_LOCK_WAIT_S = 30.0
LOOPBACK_NAMES = ("localhost", "::1")
log = logging.getLogger("hakuriver.host")


def _logging(config: dict[str, Any], node: str | None = None) -> None:
    # One handler for ours, Sanic's and the libraries' lines, as [logging] says (logs.py).
    from cli.hakuriver import logs

    logs.configure(config, node=node)


def _host_settings(config: dict[str, Any], data_dir: str | None, port: int | None) -> Any:
    from control_plane.settings import HostSettings

    settings = HostSettings.from_mapping(config, data_dir=data_dir)
    if port is not None:
        import msgspec

        network = msgspec.structs.replace(settings.network, host_port=port)
        settings = msgspec.structs.replace(settings, network=network)
    return settings


def _default_environment(settings: Any, *, local_runner_docker: bool = True) -> tuple[Any, str]:
    """The settings with the default environment resolved (``NULL`` where no engine
    answers: control_plane/env_default.py), and the notice saying so ("" if none),
    logged here as the host starts."""
    from control_plane.env_default import resolve

    settings, notice = resolve(settings, local_runner_docker=local_runner_docker)
    if notice:
        log.warning("%s", notice)
    return settings, notice or ""


def _host_app(settings: Any, claims: _Claims) -> tuple[Any, Any]:
    """The app and its TLS material (made now: the event log's lock is held)."""
    from control_plane.app import create_app

    tls = None
    if settings.tls_enabled:  # cryptography costs start-up time: imported only for TLS
        from control_plane.tls import prepare_tls

        try:
            tls = prepare_tls(settings)
        except BaseException:
            claims.release()
            raise
    app = create_app(settings, tls=tls)
    from cli.hakuriver.logs import adopt_sanic

    adopt_sanic()  # Sanic() gave its loggers handlers of their own: ours instead
    return app, tls


class _Claims:
    """The event log's lock and the listening socket, taken before the server starts."""

    def __init__(self, settings: Any, *, port_hint: str, log_hint: str) -> None:
        self.db_path: Path = settings.db_path
        self.lock = LogLock.take(self.db_path, hint=log_hint)
        try:
            self.sock = listen(
                settings.network.host_bind_ip, settings.network.host_port, hint=port_hint
            )
        except ClaimRefused:
            self.lock.release()
            raise
        address = self.sock.getsockname()
        self.host: str = address[0]
        self.port: int = address[1]
        self.scheme = "https" if settings.tls_enabled else "http"

    def release(self) -> None:
        """Give the socket and the log back (the server will not run)."""
        self.sock.close()
        self.lock.release()

    @property
    def local_url(self) -> str:
        """How this machine reaches the server (loopback when bound to every interface)."""
        return local_url(self.host, self.port, self.scheme)

    def interface_urls(self) -> list[str]:
        """How other machines may reach it (a wildcard bind's interface addresses)."""
        return interface_urls(self.port, self.scheme)

    def where(self) -> str:
        """What the server listens on, in words."""
        if is_wildcard(self.host):
            return f"all interfaces ({url_of(self.host, self.port).removeprefix('http://')})"
        return f"{self.host} only"


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


class _DropLogInUse(logging.Filter):
    """Keep Sanic from printing a traceback for a log another process holds (we say it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from control_plane.app import LogInUse

        return not (record.exc_info and isinstance(record.exc_info[1], LogInUse))


def _serve(app: Any, claims: _Claims, tls: Any) -> int:
    """Run the app on the claimed socket until SIGINT/SIGTERM (one process: one writer)."""
    from control_plane.app import LogInUse

    sanic_errors = logging.getLogger("sanic.error")
    quiet = _DropLogInUse()
    sanic_errors.addFilter(quiet)
    stop_on_signal(app)
    try:
        context = tls.server_context() if tls is not None else None
        app.run(
            sock=claims.sock,
            ssl=context,
            single_process=True,
            access_log=False,
            motd=False,
            register_sys_signals=False,
        )
    except LogInUse as exc:
        return _refuse(duckdb_lock_message(claims.db_path, str(exc)))
    finally:
        sanic_errors.removeFilter(quiet)
        claims.release()
    return 0


def stop_on_signal(app: Any) -> None:
    """SIGINT and SIGTERM stop the server gracefully, whenever they arrive once its
    ``before_server_start`` listeners ran (the control plane is open).

    Sanic's own handlers call ``loop.stop()``. One that arrives while its
    ``after_server_start`` listeners run (the socket already answers then) is used up by
    the ``run_until_complete`` running them, and the server then serves on with the
    signal forgotten: a host stopped right after it answered its first request never
    stopped. Sanic also sets both signals to be ignored just before those listeners,
    whatever ``register_sys_signals`` says; that too lost a SIGTERM sent right after the
    first answer (CI saw both). Here that ignoring is skipped, the last
    ``before_server_start`` listener installs handlers that only remember the signal, and
    the stop is sent once the server serves (``app.state.is_running``, set just before
    the loop runs forever), so it reaches the loop that waits for it. Before that listener
    (while the log opens) the default action applies (the process ends: nothing is
    acknowledged yet, and the log replays as after a kill -9).
    """
    from sanic.server import runners

    original: Any = getattr(runners, "signal_func")  # noqa: B009 (not exported: checked by mypy)
    if not getattr(original, "keeps_ours", False):

        def keep_ours(signum: int, handler: Any) -> Any:
            if signum in (signal.SIGINT, signal.SIGTERM) and handler is signal.SIG_IGN:
                return None  # Sanic's "ignore" would drop ours (see above)
            return original(signum, handler)

        keep_ours.keeps_ours = True  # type: ignore[attr-defined]
        setattr(runners, "signal_func", keep_ours)  # noqa: B010

    async def _install(app: Any) -> None:
        loop = asyncio.get_running_loop()

        def asked() -> None:
            # The stop is made on the first signal only (no task waits before it: a start
            # that fails, such as a log in use, leaves nothing pending behind).
            if getattr(app.ctx, "stop_on_signal", None) is None:
                app.ctx.stop_on_signal = loop.create_task(_stop_when_serving(app))

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, asked)

    async def _stop_when_serving(app: Any) -> None:
        # Sanic sets no event when it starts serving: the flag is polled, briefly.
        while not app.state.is_running:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Nothing else stops this loop: serving, this runs inside its run_forever.
        app.stop(terminate=False)

    async def _forget(app: Any) -> None:
        task = getattr(app.ctx, "stop_on_signal", None)
        if task is not None and not task.done():
            task.cancel()

    # The last of the start's first listeners: after the control plane opened (a start
    # that fails there, a log in use, has nothing of this to undo).
    app.register_listener(_install, "before_server_start", priority=-1000)
    app.register_listener(_forget, "after_server_stop")


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host in LOOPBACK_NAMES


def host_banner(claims: _Claims, settings: Any) -> list[str]:
    """What ``hakuriver host`` says it listens on, and where runners should connect."""
    if not is_wildcard(claims.host):
        lines = [f"HakuRiver control plane at {claims.local_url} (listening on {claims.where()})"]
        reachable = settings.network.host_reachable_address
        if _loopback(claims.host) and not _loopback(reachable):
            lines.append(
                f"note: runners and clients are told to use {settings.url}"
                " ([network] host_reachable_address), but this host listens on loopback"
                " only; set [network] host_bind_ip to let them in"
            )
        return lines
    reachable = settings.network.host_reachable_address
    others = [settings.url] if not _loopback(reachable) else claims.interface_urls()
    return [
        f"HakuRiver control plane listening on {claims.where()}",
        f"  this machine: {claims.local_url}",
        f"  other machines: {', '.join(others) or 'none (no network interface found)'}",
    ]


def tls_banner(tls: Any) -> list[str]:
    """What the host says about its TLS: the fingerprint to pin, or whose certificate."""
    if tls is None:
        return []
    if tls.fingerprint is None:
        return [f"TLS: certificate {tls.cert_file} (clients verify it with their trust store)"]
    return [
        f"TLS: certificate authority {tls.fingerprint} ({tls.ca_file})",
        "  clients and runners pin it: [network] ca_fingerprint ="
        f' "{tls.fingerprint}", or HAKURIVER_CA_FINGERPRINT={tls.fingerprint}',
    ]


def run_host(
    config: dict[str, Any], *, data_dir: str | None = None, port: int | None = None
) -> int:
    """Serve the control plane until SIGINT/SIGTERM."""
    _logging(config)
    settings = _host_settings(config, data_dir, port)
    try:
        claims = _Claims(
            settings,
            port_hint="choose another port ([network] host_port)",
            log_hint="give this one another [paths] data_dir",
        )
    except ClaimRefused as exc:
        return _refuse(str(exc))
    settings, _ = _default_environment(settings)
    app, tls = _host_app(settings, claims)
    if tls is not None and tls.fingerprint is not None:
        log.info("TLS certificate authority %s (%s)", tls.fingerprint, tls.ca_file)

    @app.after_server_start  # type: ignore[untyped-decorator]
    async def _ready(app: Any) -> None:
        for line in host_banner(claims, settings) + tls_banner(tls):
            print(line, flush=True)
        print(f"dashboard: {claims.local_url}/ (hakuriver ui opens it logged in)", flush=True)
        print(f"event log: {settings.db_path}", flush=True)

    return _serve(app, claims, tls)


def join_cluster(settings: Any, join_token: str) -> str | None:
    """Exchange ``join_token`` for this runner's credential, written to its state dir;
    a problem in one line, or None."""
    from cli.hakuriver.client import ApiError, HakuClient, Unreachable
    from events.credentials import write_secret

    base = settings.ws_url.removesuffix("/api/agents/ws")
    base = base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    try:
        pin = settings.network.ca_fingerprint or None
        with HakuClient(base, token=join_token.strip(), ca_fingerprint=pin) as client:
            answer = client.join(settings.node_name)
    except ApiError as exc:
        return f"joining as {settings.node_name} was refused: {exc}"
    except Unreachable as exc:
        return str(exc)
    write_secret(settings.agent_token_file, str(answer["token"]))
    print(
        f"joined as node {settings.node_name}; credential in {settings.agent_token_file}",
        flush=True,
    )
    return None


def run_runner(
    config: dict[str, Any],
    *,
    name: str | None = None,
    data_dir: str | None = None,
    host_url: str | None = None,
    join: str | None = None,
    ca_fingerprint: str | None = None,
    parent_fd: int | None = None,
) -> int:
    """Run a node agent until SIGINT/SIGTERM; its tasks keep running after it stops.

    ``join``: a join token, exchanged once for the runner's own credential (kept in its
    state dir, mode 0600); later starts need no token.

    The runner holds its state directory for its whole life (node_agent/state_dir.py): a
    second runner on it ends at once in one line naming the first (exit code 2).

    ``parent_fd``: the read end of a pipe whose write end only the ``hakuriver up`` that
    started this runner holds. The runner stops (as on SIGTERM) when it reads end of
    file there, which the kernel gives it when that ``up`` ends, even by ``kill -9``;
    and it waits up to ``UP_LOCK_WAIT_S`` for the runner of a previous ``up`` to let go.
    """
    from events.credentials import read_secret
    from node_agent.agent import Agent
    from node_agent.settings import RunnerSettings
    from node_agent.state_dir import StateDirError

    settings = RunnerSettings.from_mapping(
        config,
        data_dir=data_dir,
        name=name,
        host_url=host_url or os.environ.get("HAKURIVER_URL"),
        ca_fingerprint=ca_fingerprint or os.environ.get("HAKURIVER_CA_FINGERPRINT"),
    )
    _logging(config, node=settings.node_name)
    pin = settings.pinned_trust()
    # Before anything is made or a join token spent: a state dir made by the wrong user
    # would then be refused by the right one.
    problem = settings.run_tasks_as_problem(os.geteuid())
    if problem is not None:
        return _refuse(problem)
    try:
        agent = Agent(settings)
        agent.claim(wait_s=UP_LOCK_WAIT_S if parent_fd is not None else 0.0)
    except StateDirError as exc:
        return _refuse(str(exc))
    have = read_secret(settings.agent_token_file)
    if join and have:
        print(
            f"note: already joined ({settings.agent_token_file}); the join token is not used",
            flush=True,
        )
    elif join:
        problem = join_cluster(settings, join)
        if problem is not None:
            return _refuse(problem)
    elif not have:
        return _refuse(
            f"this runner has no credential ({settings.agent_token_file}): join the cluster"
            " once with: hakuriver runner --join TOKEN (an admin makes the token with:"
            " hakuriver token create --join)"
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if parent_fd is not None:
            loop.add_reader(parent_fd, _parent_gone, loop, parent_fd, stop)
        pinned = f" (pinned CA {pin.fingerprint})" if pin is not None else ""
        print(f"HakuRiver runner {settings.node_name} -> {settings.ws_url}{pinned}", flush=True)
        await agent.run(stop)

    # The default (selector) loop, whatever policy an import may have installed.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(main())
    return 0


def _parent_gone(loop: asyncio.AbstractEventLoop, fd: int, stop: asyncio.Event) -> None:
    """The ``hakuriver up`` that started this runner has ended: stop with it."""
    loop.remove_reader(fd)  # a pipe at its end stays readable: once is enough
    if not stop.is_set():
        log.warning("the hakuriver up that started this runner has ended: stopping too")
        stop.set()


def _hand_token_to_cli(cp: Any, admin_file: Path) -> list[str]:
    """Put the admin's token where the CLI looks first (``~/.hakuriver/token``, 0600).

    A file there holding a token of this cluster is kept; one holding a token this
    cluster does not know (another cluster's, or one from a wiped data dir) is replaced,
    and said so.
    """
    from cli.hakuriver.credentials import TOKEN_FILE
    from events.credentials import parse_token, read_secret, write_secret

    admin = read_secret(admin_file)
    if admin is None:
        return []
    target = TOKEN_FILE.expanduser()
    try:
        current = read_secret(target)
    except OSError:
        return [f"note: cannot read {target}; the CLI may not find the admin token"]
    known = parse_token(current) if current else None
    if known is not None and known.id in cp.state.identity.tokens:
        return []
    write_secret(target, admin)
    if current:
        return [f"note: {target} held a token this cluster does not know: replaced by the admin's"]
    return [f"  the CLI's token: {target} (the admin's)"]


def run_up(
    config: dict[str, Any],
    *,
    data_dir: str | None = None,
    port: int | None = None,
    config_file: str | None = None,
    stop_tasks_on_exit: bool = False,
) -> int:
    """A single-machine cluster: the control plane here and one local agent as a child.

    Ctrl-C leaves the tasks running (the next ``up`` re-adopts them) and says how many;
    ``stop_tasks_on_exit`` kills them first (leaving.py).
    """
    _logging(config)
    data = data_dir or config.get("paths", {}).get("data_dir") or DEFAULT_DATA_DIR
    Path(data).expanduser().mkdir(parents=True, exist_ok=True)
    settings = _host_settings(config, data, port)
    try:
        claims = _Claims(
            settings,
            port_hint="choose another port (--port)",
            log_hint="give this one another --data-dir",
        )
    except ClaimRefused as exc:
        return _refuse(str(exc))
    # The local runner's [runner] docker = false counts as no engine for the default.
    runner_docker = config.get("runner", {}).get("docker", True) is not False
    settings, notice = _default_environment(settings, local_runner_docker=runner_docker)
    app, tls = _host_app(settings, claims)
    # Loopback (the default) is plain http; bound beyond it, the agent pins the new CA.
    fingerprint = tls.fingerprint if tls is not None else None
    url = claims.local_url
    node = node_name(config.get("runner", {}).get("name", ""))
    child: dict[str, subprocess.Popen[bytes]] = {}
    lifelines: list[int] = []  # write ends of the runner's lifeline: kept open while we live
    admin_file = Path(data).expanduser() / "admin.token"

    @app.after_server_start  # type: ignore[untyped-decorator]
    async def _start_agent(app: Any) -> None:
        from cli.hakuriver.logs import child_args
        from control_plane.bootstrap import enroll_local
        from node_agent.settings import RunnerSettings

        runner = RunnerSettings.from_mapping(config, data_dir=data, name=node)
        # The local runner is enrolled by the host itself: no join step on one machine.
        await enroll_local(app.ctx.cp, node, runner.state_dir)
        for line in await asyncio.to_thread(_hand_token_to_cli, app.ctx.cp, admin_file):
            print(line, flush=True)
        # The runner stops when this process ends, however it ends: it watches a pipe
        # whose write end only this process holds (see run_runner).
        watched, lifeline = os.pipe()
        lifelines.append(lifeline)
        command = [sys.executable, "-m", "cli.hakuriver.serve", "runner"]
        command += ["--data-dir", data, "--name", node, "--url", url]
        command += ["--parent-fd", str(watched)]
        if fingerprint:
            command += ["--ca-fingerprint", fingerprint]
        if config_file:
            command += ["--config", config_file]
        command += child_args(config)  # the host's log settings (its own file)
        try:
            child["agent"] = await asyncio.to_thread(
                subprocess.Popen, command, start_new_session=True, pass_fds=(watched,)
            )
        finally:
            os.close(watched)
        print(f"HakuRiver is up: {url}  (node {node}, data in {data})", flush=True)
        if is_wildcard(claims.host):
            others = ", ".join(claims.interface_urls()) or "no network interface found"
            print(f"  listening on {claims.where()}: also {others}", flush=True)
        else:
            print(f"  listening on {claims.where()}", flush=True)
        print(f"  admin token: {admin_file} (the CLI reads it; keep it private)", flush=True)
        print(f"  dashboard: {url}/  (hakuriver ui opens it logged in)", flush=True)
        for line in tls_banner(tls):
            print(f"  {line}", flush=True)
        pin = f" HAKURIVER_CA_FINGERPRINT={fingerprint}" if fingerprint else ""
        hint = f"HAKURIVER_URL={url}{pin} hakuriver task submit --wait -- echo hello"
        print(f"  try: {hint}", flush=True)
        if notice:
            print(f"  note: {notice}", flush=True)

    @app.before_server_stop  # type: ignore[untyped-decorator]
    async def _stop_agent(app: Any) -> None:
        cp = getattr(app.ctx, "cp", None)
        asked: int | None = None
        if stop_tasks_on_exit and cp is not None:
            # Before the agent stops: it is the one that kills them and reports how.
            from events.credentials import read_secret

            admin = await asyncio.to_thread(read_secret, admin_file)
            asked, _ = await leaving.stop_tasks(cp, url, token=admin, ca_fingerprint=fingerprint)
        agent = child.get("agent")
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(agent.wait, 10)
            except subprocess.TimeoutExpired:
                agent.kill()
        if cp is not None:
            grace = settings.timing.kill_grace_period + leaving.REPORT_MARGIN_S
            for line in leaving.farewell(
                cp.state, node=node, data=data, asked=asked, timeout_s=grace
            ):
                print(line, flush=True)

    return _serve(app, claims, tls)


def main(argv: list[str] | None = None) -> int:
    """``python -m cli.hakuriver.serve host|runner ...``."""
    parser = argparse.ArgumentParser(prog="python -m cli.hakuriver.serve")
    parser.add_argument("role", choices=("host", "runner", "up"))
    parser.add_argument("--config")
    parser.add_argument("--data-dir")
    parser.add_argument("--name")
    parser.add_argument("--url")
    parser.add_argument("--join")
    parser.add_argument("--ca-fingerprint")
    parser.add_argument("--port", type=int)
    parser.add_argument("--stop-tasks-on-exit", action="store_true")
    parser.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=("human", "json"))
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--log-level")
    args = parser.parse_args(argv)
    from cli.hakuriver.logs import LogOptions, merged

    try:
        options = LogOptions(args.log_format, args.log_file, args.log_level)
        config = merged(load_config(args.config), options, runner=args.role == "runner")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from control_plane.settings import SettingsError
    from node_agent.settings import RunnerSettingsError

    try:
        if args.role == "host":
            return run_host(config, data_dir=args.data_dir, port=args.port)
        if args.role == "up":
            return run_up(
                config,
                data_dir=args.data_dir,
                port=args.port,
                config_file=args.config,
                stop_tasks_on_exit=args.stop_tasks_on_exit,
            )
        return run_runner(
            config,
            name=args.name,
            data_dir=args.data_dir,
            host_url=args.url,
            join=args.join,
            ca_fingerprint=args.ca_fingerprint,
            parent_fd=args.parent_fd,
        )
    except (SettingsError, RunnerSettingsError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
