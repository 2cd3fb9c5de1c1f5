"""``hakuriver docker-shell NAME``: a terminal on an environment container, over a websocket.

The local terminal is put in raw mode; its keys go to the host as binary frames,
the shell's output comes back the same way, and a window resize (SIGWINCH) is sent
as ``{"type": "resize"}``. When the shell exits the host sends ``{"type": "exit",
"code"}``: the terminal is restored and the command exits with the shell's code.
With stdin not a terminal (a pipe, a script), its bytes are sent as typed and its
end becomes Ctrl-D, so ``echo 'apk add x' | hakuriver docker-shell env`` works.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import ssl
import sys
import termios
import threading
import tty
from typing import Any, BinaryIO
from urllib.parse import urlencode

from cli.hakuriver.client import ApiError, Unreachable, Untrusted, auth_headers

EOT = b"\x04"


def run_shell(
    url: str,
    *,
    token: str | None = None,
    stdin_fd: int | None = None,
    stdout: BinaryIO | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ca_fingerprint: str | None = None,
) -> int:
    """Connect to the shell at ``url`` (ws://.../shell) and bridge this terminal; exit code.

    ``token`` is presented in the handshake. ``ssl_context``: how a ``wss://`` URL is
    trusted (HakuClient.ws_ssl: the pinned CA's); None: the system's trust store.
    """
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    from events.pinning import refusal

    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    out = stdout if stdout is not None else sys.stdout.buffer
    is_tty = os.isatty(fd)
    cols, rows = _size(fd)
    query = urlencode({"rows": rows, "cols": cols, "term": os.environ.get("TERM", "xterm")})
    try:
        ws = connect(
            f"{url}?{query}",
            max_size=None,
            open_timeout=15,
            close_timeout=2,
            additional_headers=auth_headers(token),
            ssl=ssl_context,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = exc.response.body.decode(errors="replace") if exc.response.body else ""
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        refused = ApiError(
            status,
            str(doc.get("error", "http_error")),
            doc.get("field"),
            str(doc.get("message") or body or f"HTTP {status}"),
        )
        refused.token_sent = bool(token)
        raise refused from None
    except ssl.SSLCertVerificationError as exc:
        raise Untrusted(url, refusal(exc, ca_fingerprint)) from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise Unreachable(url, str(exc) or type(exc).__name__) from None

    with ws:  # websockets' sync client is used as a context manager
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def receive() -> None:
            try:
                for message in ws:
                    if isinstance(message, bytes):
                        out.write(message)
                        out.flush()
                        continue
                    control = json.loads(message)
                    if control.get("type") in ("exit", "error"):
                        outcome.update(control)
            except ConnectionClosed:
                pass
            finally:
                finished.set()

        receiver = threading.Thread(target=receive, name="shell-receive", daemon=True)
        receiver.start()
        saved = termios.tcgetattr(fd) if is_tty else None
        previous_handler: Any = None
        # SIGWINCH writes a byte to this pipe and nothing else: a handler runs between
        # two bytecodes of the main thread, so one that took a lock (threading.Event
        # does) could find that thread holding it and deadlock the session.
        winch_r, winch_w = os.pipe()
        os.set_blocking(winch_r, False)
        os.set_blocking(winch_w, False)

        def on_winch(*_: object) -> None:
            with contextlib.suppress(BlockingIOError):  # a byte is already pending
                os.write(winch_w, b"w")

        if is_tty:
            tty.setraw(fd)
            with contextlib.suppress(ValueError):  # not the main thread: no resize forwarding
                previous_handler = signal.signal(signal.SIGWINCH, on_winch)
        try:
            reading = True
            while not finished.is_set():
                watched = [winch_r, fd] if reading else [winch_r]
                ready, _, _ = select.select(watched, [], [], 0.1)
                if winch_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(winch_r, 4096)  # any number of resizes: send the size once
                    c, r = _size(fd)
                    with contextlib.suppress(ConnectionClosed):
                        ws.send(json.dumps({"type": "resize", "rows": r, "cols": c}))
                if fd not in ready:
                    continue
                data = os.read(fd, 65536)
                if not data:
                    reading = False
                    if not is_tty:
                        with contextlib.suppress(ConnectionClosed):
                            ws.send(EOT)
                    continue
                try:
                    ws.send(data)
                except ConnectionClosed:
                    break
        finally:
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            if previous_handler is not None:
                signal.signal(signal.SIGWINCH, previous_handler)
            os.close(winch_r)
            os.close(winch_w)
            ws.close()
            receiver.join(timeout=5)
    if outcome.get("type") == "error":
        raise ApiError(
            int(outcome.get("status") or 400),
            "shell_refused",
            outcome.get("field"),
            str(outcome.get("message")),
        )
    code = outcome.get("code")
    return int(code) if isinstance(code, int) else 0


def _size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd``, or of the environment's guess."""
    try:
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        fallback = shutil.get_terminal_size()
        return fallback.columns, fallback.lines
