import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optinc_jax import (
    AreaReport,
    approx_matrix_mzis,
    area_ratio,
    format_approx,
    matrix_mzis,
    onn_area,
    parse_approx,
    parse_layers,
)
from optinc_jax.paper import area_rows


def _clements_mzis(n):
    """Brute force: n columns alternating MZIs on pairs (0,1),(2,3),... and (1,2),(3,4),..."""
    return sum(len(range(column % 2, n - 1, 2)) for column in range(n))


def _approx_mzis_by_blocks(rows, cols):
    """Brute force: walk the long side in steps of k and add one mesh + diagonal per block."""
    k = min(rows, cols)
    return sum(_clements_mzis(k) + k for _ in range(0, max(rows, cols), k))


def test_exact_mzi_counts():
    assert matrix_mzis(64, 4) == 2016 + 6 + 4
    assert matrix_mzis(4, 64) == 2026
    assert matrix_mzis(1, 1) == 1
    assert approx_matrix_mzis(64, 4) == 16 * (6 + 4)
    assert approx_matrix_mzis(8, 64) == 8 * (28 + 8)
    assert approx_matrix_mzis(5, 2) == 3 * (1 + 2)  # padded to three 2 x 2 blocks
    assert approx_matrix_mzis(7, 7) == 21 + 7


@given(st.integers(1, 40), st.integers(1, 40))
def test_mzi_counts_match_brute_force(rows, cols):
    assert matrix_mzis(rows, cols) == _clements_mzis(rows) + _clements_mzis(cols) + min(rows, cols)
    assert approx_matrix_mzis(rows, cols) == _approx_mzis_by_blocks(rows, cols)
    if rows == cols and rows > 1:
        assert approx_matrix_mzis(rows, cols) < matrix_mzis(rows, cols)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_mzi_counts_reject_bad_sizes(bad):
    with pytest.raises(ValueError, match="rows must be an integer >= 1"):
        matrix_mzis(bad, 4)
    with pytest.raises(ValueError, match="cols must be an integer >= 1"):
        approx_matrix_mzis(4, bad)


def test_onn_area_8bit_4_servers():
    report = onn_area("4-64-128-256-128-64-4", "1-6")
    assert isinstance(report, AreaReport)
    assert report.mzis == 41664
    assert report.mzis_full == 106260
    assert report.area_ratio == 41664 / 106260
    assert report.layers == (4, 64, 128, 256, 128, 64, 4)
    assert report.approx == (1, 2, 3, 4, 5, 6)
    assert [(m.rows, m.cols) for m in report.matrices] == [
        (64, 4),
        (128, 64),
        (256, 128),
        (128, 256),
        (64, 128),
        (4, 64),
    ]
    assert sum(m.mzis for m in report.matrices) == report.mzis


def test_onn_area_per_matrix_orientation_and_flags():
    report = onn_area((4, 64, 8), [2])
    first, second = report.matrices
    assert (first.index, first.rows, first.cols, first.approximated) == (1, 64, 4, False)
    assert (second.index, second.rows, second.cols, second.approximated) == (2, 8, 64, True)
    assert first.mzis == first.mzis_full == matrix_mzis(64, 4)
    assert second.mzis == approx_matrix_mzis(8, 64)
    assert report.mzis_full == matrix_mzis(64, 4) + matrix_mzis(8, 64)


def test_no_approximation_is_ratio_one():
    assert area_ratio("4-64-128-4") == 1.0
    assert area_ratio([4, 64, 128, 4], "none") == 1.0
    assert area_ratio([4, 64, 128, 4], []) == 1.0


@pytest.mark.parametrize("row", area_rows(), ids=lambda r: f"{r.table}-{r.bits}b{r.servers}s")
def test_paper_area_rows_within_0_15_pp(row):
    ours = 100 * area_ratio(row.layers, row.approx)
    assert abs(ours - row.area_ratio_percent) <= 0.15, (row, ours)


def test_paper_rows_cover_both_tables():
    assert [r.table for r in area_rows()].count("I") == 4
    assert [r.table for r in area_rows()].count("II") == 5
    # Paper Table II, first row, repeats Table I's 16-bit row.
    assert area_rows()[3][2:] == area_rows()[4][2:]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("4-64-128-256-128-64-4", (4, 64, 128, 256, 128, 64, 4)),
        ("1-1", (1, 1)),
        (" 4 - 8 ", (4, 8)),
    ],
)
def test_parse_layers(spec, expected):
    assert parse_layers(spec) == expected


@pytest.mark.parametrize(
    "spec", ["4", "", "4--64", "4-64-", "-4-64", "4-0-8", "4-x-8", "4,64", "4-6.5"]
)
def test_parse_layers_rejects(spec):
    with pytest.raises(ValueError, match="invalid layer widths") as info:
        parse_layers(spec)
    assert repr(spec) in str(info.value)
    assert "4-64-128-4" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("none", ()),
        ("None", ()),
        ("all", (1, 2, 3, 4, 5, 6)),
        ("3", (3,)),
        ("1-6", (1, 2, 3, 4, 5, 6)),
        ("2,4,6", (2, 4, 6)),
        ("2-4,6", (2, 3, 4, 6)),
        ("6, 2-3", (2, 3, 6)),
        ("5-5", (5,)),
        ([2, 4], (2, 4)),
        ((6, 1), (1, 6)),
        ([], ()),
    ],
)
def test_parse_approx(spec, expected):
    assert parse_approx(spec, 6) == expected


@pytest.mark.parametrize(
    "spec",
    ["0", "7", "3-1", "1,1", "1-3,2", "abc", "", "1-", "-2", "1.5", "1-2-3", "1,,2", "all,1"],
)
def test_parse_approx_rejects_strings(spec):
    with pytest.raises(ValueError, match=r"1\.\.6") as info:
        parse_approx(spec, 6)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("spec", [[0], [7], [1, 1], [True], [2.0], ["2"], 3, None])
def test_parse_approx_rejects_sequences(spec):
    with pytest.raises(ValueError, match=r"1\.\.6") as info:
        parse_approx(spec, 6)
    assert repr(spec) in str(info.value)


def test_parse_approx_rejects_bad_num_matrices():
    with pytest.raises(ValueError, match="num_matrices"):
        parse_approx("1", 0)


@given(st.integers(1, 30).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(1, n)))))
def test_format_approx_round_trip(case):
    num_matrices, indices = case
    text = format_approx(sorted(indices))
    assert parse_approx(text, num_matrices) == tuple(sorted(indices))
    runs = sum(1 for index in indices if index - 1 not in indices)
    assert text.count(",") == max(runs - 1, 0)  # consecutive indices are merged into ranges


def test_format_approx_exact_and_rejects_unsorted():
    assert format_approx([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert format_approx([4]) == "4"
    with pytest.raises(ValueError, match="strictly increasing"):
        format_approx([3, 2])
    with pytest.raises(ValueError, match="strictly increasing"):
        format_approx([2, 2])


@pytest.mark.parametrize("layers", [[4], [4, 0], [4, 2.5], [True, 4], "4"])
def test_onn_area_rejects_bad_layers(layers):
    with pytest.raises(ValueError):
        onn_area(layers)


def test_onn_area_rejects_out_of_range_approx():
    with pytest.raises(ValueError, match=r"\[7\] out of range; valid indices are 1\.\.6"):
        onn_area("4-64-128-256-128-64-4", "6-7")


def test_area_ratio_monotone_in_approximated_set():
    layers = parse_layers("4-64-128-256-512-256-128-64-8")
    ratios = [area_ratio(layers, list(range(4, stop + 1))) for stop in range(4, 9)]
    assert ratios == sorted(ratios, reverse=True)
    assert math.isclose(ratios[2], 213486 / 433710)
