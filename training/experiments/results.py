"""What each experiment hands the report: one setting's test rows and per-model predictions.

Predictions are `{model: [seed_0, seed_1, ...]}` with each entry a `{head: (M,) p}` dict, on
one common set of test rows. `comparisons` is the setting's pre-registered family of
(model, control) pairs: the report tests each pair per head and Holm-corrects within the
setting and head. `gaps` names the (student, scratch, teacher) triples whose share of the
teacher − scratch gap the report estimates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from training.experiments.harness import Preds


@dataclass
class SettingResult:
    """One experiment setting (A, B per target asset, C, D)."""

    key: str  # "A", "B/XRPUSDT", "C", "D"
    title: str
    description: str
    y: NDArray[np.int64]  # (M, H) labels per head
    times: NDArray[np.int64]  # (M,) bar start of each test window (day blocks)
    groups: NDArray[np.str_] | None = None  # (M,) symbol per row, for a per-group breakdown
    preds: dict[str, list[Preds]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    comparisons: list[tuple[str, str]] = field(default_factory=list)
    gaps: list[tuple[str, str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, p: Preds, params: int | None = None) -> None:
        """One seed's predictions of model `name`."""
        self.preds.setdefault(name, []).append(p)
        if params is not None:
            self.params[name] = params


def concat_results(parts: list[SettingResult]) -> SettingResult:
    """Folds of one setting as one result (their test blocks are disjoint in time)."""
    first = parts[0]
    out = SettingResult(
        first.key,
        first.title,
        first.description,
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.times for p in parts]),
        None if first.groups is None else np.concatenate([p.groups for p in parts]),
        params=dict(first.params),
        comparisons=list(first.comparisons),
        gaps=list(first.gaps),
        notes=dict(first.notes),
        seconds=sum(p.seconds for p in parts),
    )
    for name, runs in first.preds.items():
        out.preds[name] = [
            {h: np.concatenate([p.preds[name][i][h] for p in parts]) for h in runs[i]}
            for i in range(len(runs))
        ]
    return out
