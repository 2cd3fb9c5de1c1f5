"""Reading task output files: the tail is linear and capped, offsets past the end are safe.

Issue 14, finding 6: ``tail=1000000`` on a 1 GB log never answered (each block read was
prepended to all that was read before, and every newline counted again), and the thread
went on after the client left. These read real files in ``tmp_path``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.logs import MAX_TAIL_BYTES, read_from, read_tail

pytestmark = pytest.mark.timeout(120)


def naive_tail(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines, as ``tail -n`` reads them (a final newline ends a line)."""
    if lines <= 0 or not data:
        return b""
    wanted = lines + 1 if data.endswith(b"\n") else lines
    return b"\n".join(data.split(b"\n")[-wanted:])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b"xyz\n"]), max_size=60).map(
        b"".join
    ),
    lines=st.integers(0, 30),
    block=st.integers(1, 9),
)
def test_the_tail_is_the_last_lines_whatever_the_block_size(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, lines: int, block: int
) -> None:
    path = tmp_path_factory.mktemp("tail") / "out"
    path.write_bytes(data)
    tail = read_tail(path, lines, block=block)
    assert tail.data == naive_tail(data, lines)
    assert tail.size == len(data) and not tail.clamped


def test_a_tail_of_a_large_file_is_quick_and_capped(tmp_path: Path) -> None:
    # Given 256 MB of 2000-byte lines (the quadratic reader took minutes on far less)
    path = tmp_path / "big.out"
    line = b"y" * 1999 + b"\n"
    with path.open("wb") as f:
        for _ in range(256):
            f.write(line * 500)
    # When the last 100000 lines (200 MB) are asked for
    started = time.monotonic()
    tail = read_tail(path, 100_000)
    took = time.monotonic() - started
    # Then the answer is the last whole lines within the byte cap, at once, and says so
    assert tail.clamped
    assert len(tail.data) <= MAX_TAIL_BYTES
    assert len(tail.data) > MAX_TAIL_BYTES - len(line)
    assert tail.data.endswith(line) and tail.data.startswith(b"y")
    assert len(tail.data) % len(line) == 0
    assert tail.size == 256 * 500 * len(line)
    assert took < 5, f"reading the tail took {took:.1f}s"


def test_a_stopped_tail_reads_no_further(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"z\n" * 100_000)
    stop = threading.Event()
    stop.set()
    tail = read_tail(path, 50_000, block=16, stop=stop)
    assert tail.data == b"" and tail.size == 200_000


def test_a_line_longer_than_the_cap_gives_nothing_but_says_it_was_cut(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"start\n" + b"q" * 5000)
    tail = read_tail(path, 1, max_bytes=1000)
    assert tail.data == b"" and tail.clamped


@pytest.mark.parametrize("offset", [10, 11, 2**62, 2**63 - 1])
def test_an_offset_at_or_past_the_end_reads_nothing(tmp_path: Path, offset: int) -> None:
    # 2**63 - 1 made seek() fail (OSError: a 500) before.
    path = tmp_path / "out"
    path.write_bytes(b"0123456789")
    assert read_from(path, offset) == (b"", offset)
    assert read_from(path, 4) == (b"456789", 10)
    assert read_from(tmp_path / "missing", offset) == (b"", offset)
