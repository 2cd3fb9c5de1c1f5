"""Span parsing and Cartesian expansion: the pure core of hakurun."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.hakurun.spans import (
    SpanError,
    count_combinations,
    expand,
    iter_combinations,
    parse_arguments,
    parse_span,
    requote,
)

# --- the seed's spans -------------------------------------------------------------


def test_integer_range_is_inclusive() -> None:
    assert parse_span("span:{1..5}") == ("1", "2", "3", "4", "5")


def test_list_of_items() -> None:
    assert parse_span("span:[small,medium,large]") == ("small", "medium", "large")


@pytest.mark.parametrize(
    ("argument", "values"),
    [
        ("span:{32,64,128}", ("32", "64", "128")),
        ("span:{0.1,0.2,0.3}", ("0.1", "0.2", "0.3")),
        ("span:{1,2,4,8}", ("1", "2", "4", "8")),
        ("span:[0.001,0.01,0.1]", ("0.001", "0.01", "0.1")),
    ],
)
def test_brace_and_bracket_lists_as_the_seed_uses_them(argument: str, values: tuple[str]) -> None:
    assert parse_span(argument) == values


def test_several_spans_give_the_product_with_the_first_span_outermost() -> None:
    # The guide: `hakurun echo "Param" span:{1..3} span:[A,B]` runs these, in this order.
    assert expand(["Param", "span:{1..3}", "span:[A,B]"]) == [
        ["Param", "1", "A"],
        ["Param", "1", "B"],
        ["Param", "2", "A"],
        ["Param", "2", "B"],
        ["Param", "3", "A"],
        ["Param", "3", "B"],
    ]


def test_constants_keep_their_place_between_spans() -> None:
    combinations = expand(["--lr", "span:[0.1,0.2]", "--batch", "span:{32,64}"])
    assert combinations == [
        ["--lr", "0.1", "--batch", "32"],
        ["--lr", "0.1", "--batch", "64"],
        ["--lr", "0.2", "--batch", "32"],
        ["--lr", "0.2", "--batch", "64"],
    ]


def test_no_span_is_one_combination_of_the_arguments_as_given() -> None:
    assert expand(["a", "b"]) == [["a", "b"]]
    assert expand([]) == [[]]


def test_the_guides_million_combinations_are_counted_without_being_built() -> None:
    axes = parse_arguments(["script.py", "span:{1..100}", "span:{1..100}", "span:{1..100}"])
    assert count_combinations(axes) == 1_000_000
    assert next(iter_combinations(axes)) == ["script.py", "1", "1", "1"]


# --- range edge cases -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "values"),
    [
        ("span:{5..1}", ("5", "4", "3", "2", "1")),
        ("span:{-2..2}", ("-2", "-1", "0", "1", "2")),
        ("span:{2..-1}", ("2", "1", "0", "-1")),
        ("span:{-3..-5}", ("-3", "-4", "-5")),
        ("span:{7..7}", ("7",)),
        ("span:{0..0}", ("0",)),
        ("span:{007..9}", ("7", "8", "9")),
    ],
)
def test_range_edges(argument: str, values: tuple[str]) -> None:
    assert parse_span(argument) == values


@given(st.integers(-50, 50), st.integers(-50, 50))
def test_a_range_runs_from_start_to_end_one_step_at_a_time(start: int, end: int) -> None:
    values = [int(value) for value in parse_span(f"span:{{{start}..{end}}}")]
    assert values[0] == start
    assert values[-1] == end
    assert len(values) == abs(end - start) + 1
    assert all(abs(after - before) == 1 for before, after in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("argument", "values"),
    [
        ("span:{A..E}", ("A", "B", "C", "D", "E")),
        ("span:{a..e}", ("a", "b", "c", "d", "e")),
        ("span:{Z..W}", ("Z", "Y", "X", "W")),
        ("span:{c..a}", ("c", "b", "a")),
        ("span:{q..q}", ("q",)),
        ("span:{ A..C }", ("A", "B", "C")),
    ],
)
def test_letter_ranges_ascend_and_descend(argument: str, values: tuple[str]) -> None:
    assert parse_span(argument) == values


def test_the_seeds_a_to_z_is_the_alphabet() -> None:
    # Seed 001's table: hakurun --parallel python proc.py span:{A..Z}
    assert "".join(parse_span("span:{A..Z}")) == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --- list edge cases --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "values"),
    [
        ("span:[solo]", ("solo",)),
        ("span:{solo}", ("solo",)),
        ("span:[a, b ,c]", ("a", "b", "c")),
        ("span:[a b,c d]", ("a b", "c d")),
        ("span:[../in.csv,../out.csv]", ("../in.csv", "../out.csv")),
        ("span:{1..3,5}", ("1..3", "5")),
        ("span:[x=1,y=$HOME;rm]", ("x=1", "y=$HOME;rm")),
        ("span:[-1,--flag]", ("-1", "--flag")),
    ],
)
def test_list_edges(argument: str, values: tuple[str]) -> None:
    assert parse_span(argument) == values


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=8))
def test_a_list_gives_its_items_in_order(items: list[int]) -> None:
    text = ",".join(str(item) for item in items)
    assert parse_span(f"span:[{text}]") == tuple(str(item) for item in items)


# --- what is not a span -----------------------------------------------------------


@pytest.mark.parametrize(
    "argument",
    [
        "--opt=span:x",
        "myspan:{1..2}",
        "SPAN:{1..2}",
        " span:{1..2}",
        "{1..3}",
        "[A,B]",
        "a;b|c&&d",
        "$(touch pwned)",
        "",
    ],
)
def test_anything_not_starting_with_span_passes_through_unchanged(argument: str) -> None:
    assert expand([argument, "span:[A,B]"]) == [[argument, "A"], [argument, "B"]]


# --- malformed spans --------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "reason"),
    [
        ("span:{1..}", "two integers"),
        ("span:{..3}", "two integers"),
        ("span:{1.5..3}", "two integers"),
        ("span:{a..5}", "cannot mix a letter and a number"),
        ("span:{1..z}", "cannot mix a letter and a number"),
        ("span:{aa..zz}", "single letters, not words"),
        ("span:{A..zz}", "single letters, not words"),
        ("span:{a..Z}", "stays in one case"),
        ("span:{1...3}", "two integers"),
        ("span:[a,b", "must end with ']'"),
        ("span:{1..3", "must end with '}'"),
        ("span:{}", "at least one value"),
        ("span:[]", "at least one value"),
        ("span:[ ]", "at least one value"),
        ("span:[a,,b]", "empty"),
        ("span:[a,b,]", "empty"),
        ("span:", "quote the span"),
        ("span:1", "quote the span"),
        ("span:1..3", "quote the span"),
    ],
)
def test_a_malformed_span_names_the_argument_and_the_problem(argument: str, reason: str) -> None:
    with pytest.raises(SpanError) as raised:
        expand(["fixed", argument])
    assert raised.value.argument == argument
    assert raised.value.position == 2
    assert argument in str(raised.value)
    assert reason in str(raised.value)


def test_brace_expanded_words_are_refused_with_a_hint_to_quote() -> None:
    # What bash passes for an unquoted span:{1..3}: refusing beats sweeping "span:1".
    with pytest.raises(SpanError, match=r"quote the span: 'span:\{1\.\.3\}'"):
        expand(["span:1", "span:2", "span:3"])


@pytest.mark.parametrize(
    ("arguments", "rebuilt"),
    [
        (["span:1", "span:2", "span:3"], ["span:{1..3}"]),
        (["--lr", "span:3", "span:2", "span:1", "x"], ["--lr", "span:{3..1}", "x"]),
        (
            ["span:A", "span:B", "fixed", "span:z", "span:y"],
            ["span:{A..B}", "fixed", "span:{z..y}"],
        ),
        (["span:32", "span:64", "span:128"], ["span:{32,64,128}"]),
        (["span:01", "span:02"], ["span:{01,02}"]),  # a range would drop the zeros
        (["span:-1", "span:0", "span:1"], ["span:{-1..1}"]),
    ],
)
def test_words_the_shell_expanded_are_put_back_as_one_span(
    arguments: list[str], rebuilt: list[str]
) -> None:
    assert requote(arguments) == rebuilt
    original = [word.removeprefix("span:") for word in arguments if word.startswith("span:")]
    # Each span put back gives exactly the words it replaces, in their order.
    spans = [parse_span(word) for word in rebuilt if word.startswith("span:")]
    assert [value for axis in spans for value in axis] == original


@pytest.mark.parametrize(
    "arguments",
    [
        ["plain", "--opt=span:x", "myspan:1", "myspan:2"],  # nothing refused: nothing to fix
        ["span:{1..3}", "span:[a,b]"],  # real spans
        ["span:1"],  # one word alone: no telling what it was
        ["span:1", "span:2", "x", "span:3"],  # the lone span:3
        ["span:a,b", "span:c"],  # a comma cannot be put back into a span
    ],
)
def test_no_rebuilt_command_when_there_is_no_expanded_run(arguments: list[str]) -> None:
    assert requote(arguments) is None


# --- properties of the expansion ---------------------------------------------------

_axis = st.one_of(
    st.lists(st.integers(0, 9).map(str), min_size=1, max_size=4).map(
        lambda items: "span:[" + ",".join(items) + "]"
    ),
    st.tuples(st.integers(-3, 3), st.integers(-3, 3)).map(lambda e: f"span:{{{e[0]}..{e[1]}}}"),
    st.sampled_from(["fixed", "--flag", "x=1"]),
)


@given(st.lists(_axis, max_size=5))
def test_expansion_is_itertools_product_of_the_axes(arguments: list[str]) -> None:
    axes = parse_arguments(arguments)
    combinations = expand(arguments)
    assert combinations == [list(combination) for combination in itertools.product(*axes)]
    assert len(combinations) == count_combinations(axes)
    assert all(len(combination) == len(arguments) for combination in combinations)
