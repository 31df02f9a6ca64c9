"""Linear CKA, cosine, Pearson and the CKA heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.analysis import (
    cka_matrix,
    cosine_similarity,
    flatten_features,
    linear_cka,
    linear_cka_gram,
    pearson,
    plot_cka_matrix,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q


def test_cka_of_itself_is_one(rng: np.random.Generator) -> None:
    x = rng.standard_normal((200, 12))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scale(
    rng: np.random.Generator,
) -> None:
    x = rng.standard_normal((300, 10))
    y = x @ rng.standard_normal((10, 6)) + 0.5 * rng.standard_normal((300, 6))
    base = linear_cka(x, y)
    q = _orthogonal(rng, 10)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y) == pytest.approx(base, rel=1e-10)
    # a constant shift is removed by centring
    assert linear_cka(x + 5.0, y) == pytest.approx(base, rel=1e-10)
    deb = linear_cka(x, y, debiased=True)
    assert linear_cka(2.0 * x @ q, y, debiased=True) == pytest.approx(deb, rel=1e-9)


def test_cka_not_invariant_to_general_linear_map(rng: np.random.Generator) -> None:
    x = rng.standard_normal((300, 8))
    y = x[:, :4] + 0.1 * rng.standard_normal((300, 4))
    a = np.diag([10.0, 0.1, 1.0, 1.0, 5.0, 0.2, 1.0, 3.0]) @ _orthogonal(rng, 8)
    assert abs(linear_cka(x @ a, y) - linear_cka(x, y)) > 1e-2


def test_feature_form_equals_gram_form(rng: np.random.Generator) -> None:
    x = rng.standard_normal((150, 20))
    y = np.tanh(x[:, :5] @ rng.standard_normal((5, 7))) + rng.standard_normal((150, 7))
    assert linear_cka(x, y) == pytest.approx(linear_cka_gram(x, y), rel=1e-10)


def test_cka_hand_computed_example() -> None:
    # X = [[1],[2],[3],[4]] and Y = X**2: centred x = [-1.5,-.5,.5,1.5], y = [-6.5,-3.5,1.5,8.5]
    # CKA for 1-D features is the squared Pearson correlation.
    x = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = x**2
    xc = np.array([-1.5, -0.5, 0.5, 1.5])
    yc = np.array([-6.5, -3.5, 1.5, 8.5])
    expected = (xc @ yc) ** 2 / ((xc @ xc) * (yc @ yc))
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-12)


def test_debiased_is_lower_for_independent_small_samples(rng: np.random.Generator) -> None:
    x = rng.standard_normal((40, 30))
    y = rng.standard_normal((40, 30))
    biased = linear_cka(x, y)
    debiased = linear_cka(x, y, debiased=True)
    assert biased > 0.3  # inflated on N=40, D=30
    assert abs(debiased) < 0.1


def test_feature_flattening_and_constant_input(rng: np.random.Generator) -> None:
    feats = rng.standard_normal((10, 4, 8))
    assert flatten_features(feats).shape == (10, 32)
    assert linear_cka(np.ones((10, 3)), rng.standard_normal((10, 3))) == 0.0
    with pytest.raises(ValueError):
        linear_cka(rng.standard_normal((10, 3)), rng.standard_normal((9, 3)))


def test_cosine_and_pearson(rng: np.random.Generator) -> None:
    x = rng.standard_normal((50, 6))
    assert cosine_similarity(x, 2.0 * x) == pytest.approx(1.0)
    assert cosine_similarity(x, -x) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == 0.0
    assert pearson(x, 3.0 * x + 1.0) == pytest.approx(1.0)
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cosine_similarity(x, x[:, :3])


def test_cka_matrix_and_heat_map(rng: np.random.Generator, tmp_path: Path) -> None:
    t = [rng.standard_normal((60, 8, 4)), rng.standard_normal((60, 16))]
    s = [t[0][:, :4, :] + 0.01 * rng.standard_normal((60, 4, 4))]
    m = cka_matrix(t, s)
    assert m.shape == (2, 1)
    assert m[0, 0] > m[1, 0]
    out = plot_cka_matrix(m, tmp_path / "cka.png", "test", n_rows=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gram_route_matches_feature_form(rng: np.random.Generator) -> None:
    from training.analysis import centred_gram, cka_from_grams

    x = rng.standard_normal((80, 5, 6))
    y = x[:, :2, :] ** 2 + rng.standard_normal((80, 2, 6))
    kx, ky = centred_gram(x), centred_gram(y)
    assert cka_from_grams(kx, ky) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert cka_from_grams(kx, ky, debiased=True) == pytest.approx(
        linear_cka(x, y, debiased=True), rel=1e-10
    )
    m = cka_matrix([x], [y, x], debiased=True)
    assert m[0, 1] == pytest.approx(1.0)
