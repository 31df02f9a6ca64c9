"""PSI against a decile reference, by hand."""

from __future__ import annotations

import math

import pytest

from service.monitor.drift import FLOOR, bins_of, psi

LEVELS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_bins_from_quantiles() -> None:
    edges, expected = bins_of(LEVELS, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert edges == [1.0, 2.0, 3.0] and expected == [0.25] * 4


def test_psi_by_hand() -> None:
    edges, expected = bins_of(LEVELS, [0.0, 1.0, 2.0, 3.0, 4.0])
    # 0.5, 0.5 -> bin 0; 1.5 -> bin 1; 3.5 -> bin 3: live shares .5, .25, 0, .25
    got = psi([0.5, 0.5, 1.5, 3.5], edges, expected)
    want = 0.25 * math.log(0.5 / 0.25) + (FLOOR - 0.25) * math.log(FLOOR / 0.25)
    assert got == pytest.approx(want)
    # the reference's own shape: PSI 0; an edge value belongs to the bin it closes
    assert psi([1.0, 2.0, 3.0, 4.0], edges, expected) == pytest.approx(0.0)


def test_repeated_edges_merge() -> None:
    edges, expected = bins_of(LEVELS, [0.0, 0.0, 0.0, 3.0, 4.0])  # half the rows are 0
    assert edges == [0.0, 3.0] and expected == [0.5, 0.25, 0.25]
    assert psi([0.0, 0.0, 1.0, 5.0], edges, expected) == pytest.approx(0.0)


def test_no_finite_values_is_nan() -> None:
    edges, expected = bins_of(LEVELS, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert math.isnan(psi([], edges, expected))
    assert math.isnan(psi([math.nan], edges, expected))


def test_bad_reference() -> None:
    with pytest.raises(ValueError):
        bins_of([0.0], [1.0])
