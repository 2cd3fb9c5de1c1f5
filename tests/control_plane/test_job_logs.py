"""The line prefixing of a job's combined output (``control_plane.job_logs``): lines end at
``\\n`` or ``\\r`` (``\\r\\n`` once), a line past ``MAX_LINE`` is cut into pieces, what is
held per rank stays bounded, and the answer does not depend on how the file was read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.thorough import examples

from control_plane import job_logs
from control_plane.job_logs import MAX_LINE, _RankLog, rank_logs, read_now

PREFIX = b"node-1 | "


def prefixed(data: bytes, cuts: list[int]) -> bytes:
    """``data`` through one reader, fed in the pieces ``cuts`` makes, then flushed."""
    log = _RankLog(Path("unused"), PREFIX)
    out = bytearray()
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += log.take(data[start:cut])
        start = max(start, cut)
        assert len(log.pending) <= MAX_LINE
    return bytes(out + log.flush())


def test_lines_end_at_newline_and_carriage_return() -> None:
    assert prefixed(b"a\nb\r\nc 10%\rc 20%\rdone", []) == (
        b"node-1 | a\nnode-1 | b\r\nnode-1 | c 10%\rnode-1 | c 20%\rnode-1 | done\n"
    )
    # A \r\n split across two reads is still one line end.
    assert prefixed(b"x\r\ny\n", [2]) == b"node-1 | x\r\nnode-1 | y\n"


def test_a_long_line_is_cut_into_pieces_of_max_line() -> None:
    data = b"z" * (2 * MAX_LINE + 10) + b"\nend\n"
    out = prefixed(data, [1, MAX_LINE + 7, MAX_LINE + 8])
    lines = out.split(b"\n")
    assert lines == [
        PREFIX + b"z" * MAX_LINE,
        PREFIX + b"z" * MAX_LINE,
        PREFIX + b"z" * 10,
        PREFIX + b"end",
        b"",
    ]


@settings(max_examples=examples(200, 3000), deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"b", b"\n", b"\r", b"\r\n", b"c" * 5000]), max_size=80),
    st.lists(st.integers(min_value=0, max_value=400_000), max_size=6),
)
def test_the_answer_is_the_file_prefixed_however_it_is_read(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    out = prefixed(data, cuts)
    assert out == prefixed(data, [])  # the reads' boundaries do not show
    # Every line starts with the prefix (a \r\n's \n alone excepted) and is bounded.
    start = 0
    for i in range(len(out)):
        if out[i : i + 1] in (b"\n", b"\r"):
            line = out[start : i + 1]
            assert line.startswith(PREFIX) or (line == b"\n" and out[i - 1 : i] == b"\r")
            assert len(line) <= len(PREFIX) + MAX_LINE + 1
            start = i + 1
    assert start == len(out)
    # Without the prefixes and the newlines (cuts and the last line's end add some), it
    # is the file.
    assert out.replace(PREFIX, b"").replace(b"\n", b"") == data.replace(b"\n", b"")


def test_one_rank_alone_passes_through_untouched(tmp_path: Path) -> None:
    path = tmp_path / "rank.out"
    data = b"no newline at the end \r" * 100_000
    path.write_bytes(data)
    (log,) = rank_logs([(0, path)], prefixed=False)

    async def read() -> list[bytes]:
        return [chunk async for chunk in read_now([log])]

    chunks = asyncio.run(read())
    assert b"".join(chunks) == data
    assert max(map(len, chunks)) <= job_logs.CHUNK


def test_read_now_stops_at_the_size_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rank.out"
    path.write_bytes(b"line\n" * 10)
    (log,) = rank_logs([(0, path)], prefixed=True)
    monkeypatch.setattr(job_logs, "CHUNK", 7)

    async def read() -> bytes:
        out = bytearray()
        async for chunk in read_now([log]):
            out += chunk
            with path.open("ab") as f:  # the rank goes on writing
                f.write(b"more\n")
        return bytes(out)

    assert asyncio.run(read()) == b"node-0 | line\n" * 10
