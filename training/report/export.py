"""The report's artefacts: the committed student (ONNX + card), the ensemble teacher's
members (runs/train/teacher/, for `python -m training audit`), and the inference-cost table.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service import features as fx
from service.model.card import FeatureReference, NetworkSpec
from training.data.dataset import Split
from training.experiments.common import Env
from training.experiments.selection import Selection
from training.export import REFERENCE_QUANTILES
from training.nets.networks import NetSpec, build_network, count_parameters

PARITY_FIXTURE = Path("tests/fixtures/student_parity.npz")
QUANTILES = REFERENCE_QUANTILES  # deciles 0 .. 1, as `python -m training export` writes


def feature_reference(tr: Split) -> FeatureReference:
    """Per-feature quantiles of the feature rows the committed student's training windows
    read (all pooled symbols, each bar once)."""
    t = tr.x.shape[2]
    # bar position of every (window, time step): column k is bar pos − (T − 1 − k); symbols
    # are apart by POS_STRIDE, so a position names one (symbol, bar)
    bar = tr.pos[:, None] - np.arange(t - 1, -1, -1)[None, :]  # (N, T)
    values = np.moveaxis(tr.x, 1, -1).reshape(-1, tr.x.shape[1])  # (N·T, F)
    _, first = np.unique(bar.ravel(), return_index=True)
    rows = values[first].astype(np.float64)
    q = np.quantile(rows, np.asarray(QUANTILES), axis=0)  # (Q, F)
    return FeatureReference(
        quantiles=list(QUANTILES),
        values={n: [float(v) for v in q[:, j]] for j, n in enumerate(fx.FEATURE_NAMES)},
        rows=int(rows.shape[0]),
    )


def _ensemble(env: Env, trained: Sequence[nn.Module]) -> nn.Module:
    import copy

    from training.nets.ensemble import Ensemble

    # a member that served as a distillation teacher was frozen (requires_grad off), and
    # parameter counts only count trainable tensors: count (and save) unfrozen copies
    members = [copy.deepcopy(m).requires_grad_(True).eval() for m in trained]
    return Ensemble(
        members,
        feature_member=min(env.cfg.feature_member, len(members) - 1),
        seeds=env.cfg.members,
        info={"trained_on": list(env.cfg.pooled.symbols), "by": "python -m training report"},
    )


def save_teacher(env: Env, sel: Selection) -> Path:
    """The committed student's ensemble teacher (the selection's; A's last-fold members when
    the selection reads A's windows), as `training.nets.ensemble.load_ensemble` reads it."""
    path = _ensemble(env, sel.members).save(Path(env.cfg.teacher_dir))  # type: ignore[operator]
    env.log(f"saved the ensemble teacher to {path}")
    return Path(path)


def export_committed(env: Env, sel: Selection) -> dict[str, Any]:
    """Export the selected student with its card (per-head test metrics on A's last fold)."""
    from training.export import card_metrics, export_student, teacher_network_spec

    cfg = env.cfg
    assert sel.net is not None and sel.spec is not None
    assert sel.data is not None
    teacher = _ensemble(env, sel.members)
    data = sel.data
    test = data.test
    if getattr(test, "symbol", None) is None:
        from dataclasses import replace

        test = replace(test, symbol=data.test_symbol)
    from training.distill.distiller import default_pairs

    # the chosen size's own layer pairs (a one-block student has fewer than the default)
    n_blocks = len(sel.spec.channels)  # 0: the linear student has no feature to pair
    pairs = [list(p) for p in default_pairs(len(env.t_spec.channels), n_blocks)] if n_blocks else []
    metrics = card_metrics(sel.net, test, teacher, pairs, cfg.cka_rows)
    rng = np.random.default_rng(0)
    parity_x = test.x[np.sort(rng.choice(len(test), size=min(64, len(test)), replace=False))]
    span = {
        "symbols": list(cfg.pooled.symbols),
        "interval": cfg.interval,
        "train_first_ms": int(data.train.start_ms.min()),
        "train_last_ms": int(data.train.start_ms.max()),
        "val_first_ms": int(data.val.start_ms.min()),
        "val_last_ms": int(data.val.start_ms.max()),
        "test_first_ms": int(test.start_ms.min()),
        "test_last_ms": int(test.start_ms.max()),
        "test_windows": len(test),
    }
    onnx_path = Path(cfg.models_dir) / f"{cfg.select.name}.onnx"
    card, measured = export_student(
        sel.net,
        onnx_path,
        parity_x,
        {
            "name": cfg.select.name,
            "symbols": list(cfg.pooled.symbols),
            "interval": cfg.interval,
            "window": fx.WINDOW,
            "teacher": teacher_network_spec(teacher),
            "student": NetworkSpec(
                family=sel.spec.family, arch=sel.spec.to_dict(), params=count_parameters(sel.net)
            ),
            "distillation": {
                "method": cfg.select.method,
                "seed": cfg.seeds[0],
                "pairs": pairs,
                "selection": sel.as_dict(),
                "config": cfg.distill.__dict__ | {"method": cfg.select.method},
                "fit": cfg.student_fit.__dict__,
                "report": cfg.to_dict(),
            },
            "metrics": metrics,
            "data_span": span,
            "feature_reference": feature_reference(data.train),
        },
    )
    if Path(cfg.models_dir).resolve() == (Path.cwd() / "models").resolve():
        from training.export import write_parity_fixture

        # the committed model's parity fixture (no torch):
        # tests/service/model/test_committed_model.py
        write_parity_fixture(sel.net, card, parity_x, PARITY_FIXTURE)
    env.log(f"exported {onnx_path}")
    return {"path": str(onnx_path), "card": card.model_dump(), **measured}


def _torch_us(nets: Sequence[nn.Module], x: torch.Tensor, n: int = 300) -> float:
    with torch.no_grad():
        for _ in range(20):
            for m in nets:
                m(x)
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            for m in nets:
                m(x)
            times.append(time.perf_counter_ns() - t0)
    return float(np.median(times) / 1e3)


def inference_section(env: Env, selection: dict[str, Any] | None) -> str:
    """Markdown: parameters and single-row latency of the ensemble, one member and every
    pre-registered student size (torch and onnxruntime, one thread, median). Latency does
    not depend on the weights, so fresh networks are timed."""
    from training.export import export_onnx, ort_latency_us

    torch.set_num_threads(1)
    k = len(env.cfg.members)
    specs: list[tuple[str, NetSpec]] = [("single teacher (one member)", env.t_spec)]
    sizes = env.cfg.select.sizes
    for ch in sizes:
        specs.append(
            (
                f"student {list(ch)}",
                NetSpec(**{**env.s_spec.__dict__, "channels": tuple(ch), "dilations": ()}),
            )
        )
    if env.cfg.linear_student:
        specs.append(("linear student", NetSpec("mlp", fx.N_FEATURES, fx.WINDOW, ())))
    x = torch.zeros(1, fx.N_FEATURES, fx.WINDOW)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in specs:
            net = build_network(spec).eval()
            path = export_onnx(net, Path(tmp) / "m.onnx", spec.n_features, spec.window)
            ort_us = ort_latency_us(path, x.numpy(), n=500)
            rows.append((label, count_parameters(net), _torch_us([net], x), ort_us))
        members = [build_network(env.t_spec).eval() for _ in range(k)]
        t_us = _torch_us(members, x)
        rows.insert(
            0,
            (
                f"ensemble teacher ({k} members)",
                k * rows[0][1],
                t_us,
                k * rows[0][3],
            ),
        )
    lines = [
        "## Inference cost (single row, one thread, median)\n",
        "| network | parameters | torch µs / row | onnxruntime µs / row |",
        "|---|---|---|---|",
    ]
    for label, params, tu, ou in rows:
        lines.append(f"| {label} | {params:,} | {tu:.1f} | {ou:.1f} |")
    chosen = selection["chosen"] if selection else None
    lines.append(
        f"\nThe ensemble's onnxruntime figure is {k} × one member's (run one after another); "
        f"its torch figure runs the {k} members in turn. Committed size: {chosen}. Measured "
        "on the machine that ran the report, which other jobs share; `make bench` gives the "
        "service-side figures.\n"
    )
    return "\n".join(lines) + "\n"
