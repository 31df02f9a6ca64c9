"""Representation similarity between teacher and student features.

Linear CKA (Kornblith et al., 2019) in its feature-space form, the debiased estimator
(Nguyen et al., 2021 / Song et al., 2012 unbiased HSIC) for small samples, cosine similarity
and Pearson correlation, and a teacher-layers × student-layers CKA heat map.

Everything runs in float64 numpy: CKA is a ratio of squared Frobenius norms and float32
loses digits quickly once N is in the thousands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def flatten_features(a: ArrayLike) -> F64:
    """Flatten a feature batch to (N, D): (B, C, T) → (B, C·T); (B, C) stays as is."""
    x = np.asarray(a, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"features need a batch axis and at least one feature axis, got {x.shape}")
    return x.reshape(x.shape[0], -1)


def _check_pair(x: ArrayLike, y: ArrayLike) -> tuple[F64, F64]:
    xa, ya = flatten_features(x), flatten_features(y)
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(f"CKA needs the same rows: {xa.shape[0]} vs {ya.shape[0]}")
    if xa.shape[0] < 2:
        raise ValueError("CKA needs at least 2 rows")
    return xa, ya


def _centre(x: F64) -> F64:
    out: F64 = x - x.mean(axis=0, keepdims=True)
    return out


def linear_cka(x: ArrayLike, y: ArrayLike, debiased: bool = False) -> float:
    """Linear CKA between (N, D1) and (N, D2) representations of the same N inputs.

    Feature-space form: ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F · ‖Yᶜᵀ Yᶜ‖_F) with columns centred, which
    costs O(N·D²) instead of the O(N²) Gram form. `debiased=True` uses the unbiased HSIC
    estimator, whose value is not inflated on small N (it can be slightly negative).
    Returns 0.0 when either side is constant.
    """
    xa, ya = _check_pair(x, y)
    if debiased:
        return _debiased_cka(xa, ya)
    xc, yc = _centre(xa), _centre(ya)
    cross = np.linalg.norm(yc.T @ xc, ord="fro") ** 2  # (D2, D1)
    nx = np.linalg.norm(xc.T @ xc, ord="fro")  # (D1, D1)
    ny = np.linalg.norm(yc.T @ yc, ord="fro")  # (D2, D2)
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(cross / (nx * ny))


def linear_cka_gram(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA via centred Gram matrices, HSIC(K, L) / sqrt(HSIC(K, K)·HSIC(L, L)).

    O(N²) memory; kept as the reference the feature-space form is tested against.
    """
    xa, ya = _check_pair(x, y)
    n = xa.shape[0]
    h = np.eye(n) - np.full((n, n), 1.0 / n)  # centring matrix (N, N)
    k = h @ (xa @ xa.T) @ h
    lm = h @ (ya @ ya.T) @ h
    kl = float(np.sum(k * lm))
    kk = float(np.sum(k * k))
    ll = float(np.sum(lm * lm))
    if kk == 0.0 or ll == 0.0:
        return 0.0
    return float(kl / np.sqrt(kk * ll))


def _unbiased_hsic(k: F64, lm: F64) -> float:
    """Unbiased HSIC estimator (Song et al., 2012) on Gram matrices with zeroed diagonals."""
    n = k.shape[0]
    kt = k.copy()
    lt = lm.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    term1 = float(np.sum(kt * lt))
    term2 = float(kt.sum() * lt.sum()) / ((n - 1) * (n - 2))
    term3 = 2.0 * float(kt.sum(axis=0) @ lt.sum(axis=0)) / (n - 2)
    return float((term1 + term2 - term3) / (n * (n - 3)))


def _debiased_cka(x: F64, y: F64) -> float:
    if x.shape[0] < 4:
        raise ValueError("debiased CKA needs at least 4 rows")
    xc, yc = _centre(x), _centre(y)
    k = xc @ xc.T  # (N, N)
    lm = yc @ yc.T
    kl = _unbiased_hsic(k, lm)
    kk = _unbiased_hsic(k, k)
    ll = _unbiased_hsic(lm, lm)
    if kk <= 0.0 or ll <= 0.0:
        return 0.0
    return float(kl / np.sqrt(kk * ll))


def cosine_similarity(x: ArrayLike, y: ArrayLike) -> float:
    """Mean row-wise cosine similarity of two (N, D) arrays of equal width (after projection)."""
    xa, ya = flatten_features(x), flatten_features(y)
    if xa.shape != ya.shape:
        raise ValueError(f"cosine needs equal shapes (project first): {xa.shape} vs {ya.shape}")
    num = np.sum(xa * ya, axis=1)
    den = np.linalg.norm(xa, axis=1) * np.linalg.norm(ya, axis=1)
    safe = np.where(den > 0, den, 1.0)
    return float(np.mean(np.where(den > 0, num / safe, 0.0)))


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson correlation of all paired elements of two equally shaped arrays."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"pearson needs equal sizes: {xa.size} vs {ya.size}")
    xc, yc = xa - xa.mean(), ya - ya.mean()
    den = float(np.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))
    return 0.0 if den == 0.0 else float(np.sum(xc * yc) / den)


def centred_gram(x: ArrayLike) -> F64:
    """Gram matrix of the column-centred features, (N, N): Xᶜ Xᶜᵀ."""
    xc = _centre(flatten_features(x))
    out: F64 = xc @ xc.T
    return out


def cka_from_grams(k: F64, lm: F64, debiased: bool = False) -> float:
    """CKA from two centred Grams (see :func:`centred_gram`); equal to :func:`linear_cka`."""
    if debiased:
        kl, kk, ll = _unbiased_hsic(k, lm), _unbiased_hsic(k, k), _unbiased_hsic(lm, lm)
    else:
        kl, kk, ll = float(np.sum(k * lm)), float(np.sum(k * k)), float(np.sum(lm * lm))
    if kk <= 0.0 or ll <= 0.0:
        return 0.0
    return float(kl / np.sqrt(kk * ll))


def cka_matrix(
    teacher_feats: Sequence[ArrayLike],
    student_feats: Sequence[ArrayLike],
    debiased: bool = False,
) -> F64:
    """CKA for every (teacher layer, student layer) pair → (L_teacher, L_student).

    Conv features (N, C, T) are flattened to (N, C·T), which is usually wider than N, so the
    matrix is built from one centred Gram per layer (O(N²·D) once, then O(N²) per pair).
    """
    return cka_matrix_from_grams(
        [centred_gram(t) for t in teacher_feats],
        [centred_gram(a) for a in student_feats],
        debiased,
    )


def cka_matrix_from_grams(
    teacher_grams: Sequence[F64], student_grams: Sequence[F64], debiased: bool = False
) -> F64:
    """:func:`cka_matrix` from precomputed centred Grams (reuse the teacher's across students)."""
    out = np.zeros((len(teacher_grams), len(student_grams)), dtype=np.float64)
    for i, ti in enumerate(teacher_grams):
        for j, sj in enumerate(student_grams):
            out[i, j] = cka_from_grams(ti, sj, debiased=debiased)
    return out


def plot_cka_matrix(
    matrix: ArrayLike,
    path: str | Path,
    title: str,
    n_rows: int,
    teacher_labels: Sequence[str] | None = None,
    student_labels: Sequence[str] | None = None,
) -> Path:
    """Save a CKA heat map (teacher layers as rows) to `path`; N is printed in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    tl = list(teacher_labels or [f"t{i}" for i in range(m.shape[0])])
    sl = list(student_labels or [f"s{j}" for j in range(m.shape[1])])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * m.shape[1], 1.0 + 0.8 * m.shape[0]))
    im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(m.shape[1]), sl)
    ax.set_yticks(range(m.shape[0]), tl)
    ax.set_xlabel("student layer")
    ax.set_ylabel("teacher layer")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title(f"{title}\nlinear CKA, N={n_rows}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
