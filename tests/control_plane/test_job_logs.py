"""The line prefixing of a job's combined output (``control_plane.job_logs``): lines end at
``\\n`` or ``\\r`` (``\\r\\n`` once), a line past ``MAX_LINE`` is cut into pieces, what is
held per rank stays bounded, and the answer does not depend on how the file was read, nor
on where a reading cut off was resumed (``from``: a piece's offset)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.thorough import examples

from control_plane import job_logs
from control_plane.errors import InvalidRequest
from control_plane.job_logs import MAX_LINE, RankLog, parse_offsets, rank_logs, read_now
from control_plane.logs import read_from

PREFIX = b"node-1 | "


def prefixed(data: bytes, cuts: list[int]) -> bytes:
    """``data`` through one reader, fed in the pieces ``cuts`` makes, then flushed."""
    log = RankLog(1, Path("unused"), PREFIX)
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
        return [piece.data async for piece in read_now([log])]

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
        async for piece in read_now([log]):
            out += piece.data
            with path.open("ab") as f:  # the rank goes on writing
                f.write(b"more\n")
        return bytes(out)

    assert asyncio.run(read()) == b"node-0 | line\n" * 10


def resumed(data: bytes, sizes: list[int], prefix: bytes) -> tuple[bytes, bytes]:
    """``data`` read whole by one reader, and read by a reader that is cut off after the
    reads of ``sizes`` then resumed by a new one from the offset of its last piece (what
    a follower cut off by a host restart does)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rank.out"
        path.write_bytes(data)
        (whole,) = rank_logs([(1, path)], prefixed=bool(prefix))
        once = whole.take(data) + whole.flush()
        (first,) = rank_logs([(1, path)], prefixed=bool(prefix))
        seen = bytearray()
        offset = 0
        for size in sizes:
            chunk, first.position = read_from(path, first.position, size)
            if out := first.take(chunk):
                seen += out  # what the client wrote, and the offset it keeps
                offset = first.piece(out).offset
        (second,) = rank_logs([(1, path)], prefixed=bool(prefix), offsets={1: offset})
        rest, _ = read_from(path, offset, len(data) + 1)
        seen += second.take(rest) + second.flush()
        return once, bytes(seen)


@settings(max_examples=examples(200, 3000), deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"b", b"\n", b"\r", b"\r\n", b"c" * 9000]), max_size=60),
    st.lists(st.integers(min_value=0, max_value=70_000), max_size=8),
    st.booleans(),
)
def test_a_reading_resumed_from_a_pieces_offset_writes_what_one_reading_would(
    parts: list[bytes], sizes: list[int], prefixed_: bool
) -> None:
    once, seen = resumed(b"".join(parts), sizes, PREFIX if prefixed_ else b"")
    assert seen == once


def test_a_resume_between_a_carriage_return_and_its_newline_adds_no_line() -> None:
    # The first reading stops right after "a\r": the \n that follows ends the same line.
    once, seen = resumed(b"a\r\nb\n", [2], PREFIX)
    assert seen == once == b"node-1 | a\r\nnode-1 | b\n"
    # A held partial line is read again from its start, not broken in two.
    once, seen = resumed(b"x\npartial line\n", [9], PREFIX)
    assert seen == once == b"node-1 | x\nnode-1 | partial line\n"


def test_read_now_gives_each_pieces_rank_and_offset(tmp_path: Path) -> None:
    paths = []
    for rank in (0, 1):
        path = tmp_path / f"{rank}.out"
        path.write_bytes(f"one {rank}\ntwo {rank}\nhalf".encode())
        paths.append((rank, path))
    logs = rank_logs(paths, prefixed=True, offsets={1: 6})

    async def read() -> list[job_logs.Piece]:
        return [piece async for piece in read_now(logs)]

    pieces = asyncio.run(read())
    assert [(p.rank, p.offset) for p in pieces] == [(0, 12), (0, 16), (1, 12), (1, 16)]
    assert b"".join(p.data for p in pieces) == (
        b"node-0 | one 0\nnode-0 | two 0\nnode-0 | half\nnode-1 | two 1\nnode-1 | half\n"
    )


def test_offsets_parse_and_refuse_naming_from() -> None:
    assert parse_offsets("", range(3)) == {}
    assert parse_offsets("0:1234,2:99", range(3)) == {0: 1234, 2: 99}
    for text, why in [
        ("0:1,0:2", "named twice"),
        ("3:0", "rank 3"),
        ("0:-1", "RANK:OFFSET"),
        ("0:\u0661", "RANK:OFFSET"),  # an Arabic-Indic one
        ("0=1", "RANK:OFFSET"),
        ("0:1,", "RANK:OFFSET"),
        ("0:" + "9" * 19, "too large"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            parse_offsets(text, range(3))
        assert caught.value.field == "from" and why in caught.value.message, text


def test_a_silent_follow_says_it_is_alive_every_keepalive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job silent for hours must not look like a host gone: after each KEEPALIVE_S
    # without output the follow yields None (the route's keep-alive record).
    monkeypatch.setattr(job_logs, "KEEPALIVE_S", 0.05)
    path = tmp_path / "rank.out"
    path.write_bytes(b"first\n")
    logs = rank_logs([(0, path)], prefixed=False)
    stopping = asyncio.Event()

    async def changed(within_s: float) -> None:
        await asyncio.sleep(0.01)  # no commit comes: the follow looks again soon

    async def scenario() -> list[object]:
        got: list[object] = []
        async for piece in job_logs.follow(logs, lambda: False, changed, stopping):
            got.append(piece if piece is None else piece.data)
            if got.count(None) == 2:
                stopping.set()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert got[0] == b"first\n" and got[1:3] == [None, None]
