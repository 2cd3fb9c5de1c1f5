"""Parsing what users type: targets, sizes, mounts and submit bodies."""

from __future__ import annotations

import pytest

from control_plane.errors import InvalidRequest
from control_plane.requests import (
    Target,
    decode_submit,
    parse_cores,
    parse_mount,
    parse_size,
    parse_target,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node1", Target(node="node1")),
        ("node1:0", Target(node="node1", numa_id=0)),
        ("node3::0,1", Target(node="node3", gpu_ids=(0, 1))),
        ("node3::0,1,3", Target(node="node3", gpu_ids=(0, 1, 3))),
        ("gpu-box.lab:1::2", Target(node="gpu-box.lab", numa_id=1, gpu_ids=(2,))),
    ],
)
def test_targets_from_the_seeds(text: str, expected: Target) -> None:
    assert parse_target(text) == expected
    assert str(parse_target(text)) == text


@pytest.mark.parametrize("text", ["", "node1:", "node1::", "node1:x", "node1::0,,1", ":0", "a b"])
def test_malformed_targets_name_the_field(text: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_target(text, "targets[2]")
    assert err.value.field == "targets[2]"


def test_a_gpu_named_twice_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="names a GPU twice"):
        parse_target("n::1,1")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512_000_000),
        ("4G", 4_000_000_000),
        ("2048K", 2_048_000),
        ("1Gi", 1 << 30),
        ("1.5G", 1_500_000_000),
        ("4.1G", 4_100_000_000),  # exact: a float product was one byte short
        ("100", 100),
        (7, 7),
        (None, None),
    ],
)
def test_sizes_use_1000_based_units_unless_binary(text: str | int | None, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["-1G", "lots", "4X", "", "99999999999999999999999T", "1" + "0" * 400 + "K"]
)
def test_bad_sizes(text: str) -> None:
    with pytest.raises(InvalidRequest, match="memory"):
        parse_size(text)


def test_mounts() -> None:
    assert parse_mount("/data:/data") == ("/data", "/data", False)
    assert parse_mount("/data:/in:ro") == ("/data", "/in", True)
    with pytest.raises(InvalidRequest, match=r"mounts\[0\]"):
        parse_mount("data:/data", "mounts[0]")


def test_submit_body_errors_name_the_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        decode_submit(b'{"command": "echo", "cores": -2}')
    assert err.value.field == "cores"
    with pytest.raises(InvalidRequest) as err:
        decode_submit(b'{"command": "echo", "targets": "node1"}')
    assert err.value.field == "targets"
    with pytest.raises(InvalidRequest) as err:
        decode_submit(b'{"command": "echo", "corse": 2}')
    assert "corse" in str(err.value)
    with pytest.raises(InvalidRequest) as err:
        decode_submit(b'{"command": ')
    assert err.value.field == "body"
    assert decode_submit(b'{"command": "echo", "args": ["$(x)", ";"]}').args == ["$(x)", ";"]


# --- resource values that cannot work are refused, naming the field (issue 11) ----------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("0", "no memory at all"),
        ("0M", "no memory at all"),
        ("0.0G", "no memory at all"),
        (0, "no memory at all"),
        ("-5G", "is negative"),
        ("-1", "is negative"),
        (-5, "is negative"),
        ("1.5", "not a whole number of bytes"),
        ("1.0001K", "not a whole number of bytes"),
        ("1" + "0" * 5000 + "K", "is more than"),
    ],
)
def test_memory_that_cannot_work_is_refused(text: str | int, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as refused:
        parse_size(text)
    assert refused.value.field == "memory"


@pytest.mark.parametrize(("text", "cores"), [("0", 0), ("4", 4), (" 12 ", 12), (7, 7)])
def test_cores_are_whole_numbers_from_zero(text: str | int, cores: int) -> None:
    assert parse_cores(text) == cores


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1.5", "not a whole number"),
        ("-1", "is negative"),
        ("-0.5", "is negative"),
        ("many", "not a number"),
        ("", "not a number"),
        ("4097", "more than 4096 cores"),
    ],
)
def test_cores_that_cannot_work_are_refused(text: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match=says) as refused:
        parse_cores(text)
    assert refused.value.field == "cores"
    assert "0: no core accounting" in refused.value.message or says.startswith("more")


def test_null_means_no_container_in_any_case_and_names_no_environment() -> None:
    from control_plane.environments import check_name
    from events.config import is_no_container

    assert all(is_no_container(n) for n in ("NULL", "null", "Null"))
    assert not any(is_no_container(n) for n in (None, "", "nullx", "base"))
    with pytest.raises(InvalidRequest, match="means no container"):
        check_name("null")
