"""ONNX export of the student (DESIGN section 5), timm-style: export, check, compare.

Only the student travels: projection heads and the teacher stay behind. The graph takes raw
features "features" (batch, F, T) float32 — normalisation is the network's first layer — and
returns one probability per head, "prob_up" (batch,) = softmax(logits[:, 0])[:, 1] and
"prob_high_vol" (batch,) = softmax(logits[:, 1])[:, 1], plus "logits" (batch, 2, 2). One
self-contained file at opset 18 (no external .onnx.data), `onnx.checker` full check, then
onnxruntime must match torch within 1e-5 on a fixed batch (every output) before the model
card is written beside it, with per-head metrics and the feature reference (training-row
quantiles per feature at the deciles 0, 0.1, ..., 1).

`python -m training export --checkpoint runs/<name>/checkpoint.pt --out models/<name>.onnx`
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

from service import features as fx
from service.model.card import (
    HEAD_OUTPUTS,
    HEADS,
    FeatureReference,
    ModelCard,
    NetworkSpec,
    TensorSpec,
    sha256_file,
)

F32 = NDArray[np.float32]
OPSET = 18
INPUT_NAME = "features"
PROB_OUTPUTS = tuple(HEAD_OUTPUTS[h] for h in HEADS)  # ("prob_up", "prob_high_vol")
OUTPUT_NAMES = (*PROB_OUTPUTS, "logits")
PARITY_ATOL = 1e-5
REFERENCE_QUANTILES = tuple(round(0.1 * k, 1) for k in range(11))  # deciles 0 .. 1


class HeadProbs(nn.Module):
    """Wraps a student so the graph outputs each head's probability and the raw logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.net(x)  # (B, F, T) -> (B, H, 2)
        p = torch.softmax(logits, dim=-1)[:, :, 1]  # (B, H)
        return p[:, 0], p[:, 1], logits  # prob_up (B,), prob_high_vol (B,), logits (B, H, 2)


ProbUp = HeadProbs  # the one-head name, kept for callers


def export_onnx(student: nn.Module, path: str | Path, n_features: int, window: int) -> Path:
    """Export `student` (eval mode) to one self-contained ONNX file with a dynamic batch."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = HeadProbs(student).eval()
    example = torch.zeros(2, n_features, window)
    torch.onnx.export(
        wrapper,
        (example,),
        str(out),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=OPSET,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    stray = out.with_name(out.name + ".data")
    if stray.exists():
        raise RuntimeError(f"{stray} was written: the export must be a single file")
    drop_stack_traces(out)
    return out


STACK_TRACE = "pkg.torch.onnx.stack_trace"  # per-node metadata the dynamo exporter adds


def drop_stack_traces(path: Path) -> None:
    """Remove each node's Python stack trace from the file: it names the source files by
    their absolute paths, so the bytes (and the card's sha256) would depend on where the
    checkout lies, and a shipped model would carry the trainer's directory layout."""
    import onnx

    model = onnx.load(str(path))
    nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    for node in nodes:
        keep = [m for m in node.metadata_props if m.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, str(path))


def check_onnx(path: str | Path) -> None:
    """`onnx.checker` full check (types and shapes inferred) plus the I/O contract."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != [INPUT_NAME] or names_out[: len(PROB_OUTPUTS)] != list(PROB_OUTPUTS):
        raise ValueError(f"{path}: unexpected graph I/O {names_in} -> {names_out}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ValueError(f"{path}: opset {opset} < 17")


@torch.no_grad()
def torch_outputs(student: nn.Module, x: NDArray[np.float32]) -> dict[str, F32]:
    """Every graph output from torch for windows x (B, F, T): prob_up, prob_high_vol (B,),
    logits (B, H, 2)."""
    wrapper = HeadProbs(student).eval()
    outs = wrapper(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return {name: o.numpy() for name, o in zip(OUTPUT_NAMES, outs, strict=True)}


def ort_outputs(path: str | Path, x: NDArray[np.float32]) -> dict[str, F32]:
    """Every graph output from onnxruntime (CPU, one thread), keyed by output name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
    return {name: np.asarray(o) for name, o in zip(OUTPUT_NAMES, outs, strict=True)}


def parity(student: nn.Module, path: str | Path, x: NDArray[np.float32]) -> float:
    """Max |onnxruntime − torch| over every output; raises if above 1e-5."""
    t, o = torch_outputs(student, x), ort_outputs(path, x)
    err = 0.0
    for name in OUTPUT_NAMES:
        if o[name].shape != t[name].shape:
            raise AssertionError(f"{name}: ONNX shape {o[name].shape} != torch {t[name].shape}")
        np.testing.assert_allclose(o[name], t[name], atol=PARITY_ATOL, rtol=0, err_msg=name)
        err = max(err, float(np.abs(o[name] - t[name]).max()))
    return err


def ort_latency_us(path: str | Path, x_row: NDArray[np.float32], n: int = 2000) -> float:
    """Median single-row onnxruntime latency in microseconds (one thread, warmed up)."""
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {INPUT_NAME: np.ascontiguousarray(x_row[:1], np.float32)}
    for _ in range(200):
        sess.run([OUTPUT_NAMES[0]], feed)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        sess.run([OUTPUT_NAMES[0]], feed)
        times[i] = time.perf_counter_ns() - t0
    return float(np.median(times) / 1e3)


@torch.no_grad()
def torch_latency_us(net: nn.Module, x_row: NDArray[np.float32], n: int = 300) -> float:
    """Median single-row torch latency in microseconds (eval mode, warmed up; for models
    that are not exported, such as an ensemble teacher). Threads: the caller's setting."""
    import time

    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(x_row[:1], np.float32))
    for _ in range(30):
        net(x)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        net(x)
        times[i] = time.perf_counter_ns() - t0
    return float(np.median(times) / 1e3)


def git_commit() -> str:
    """HEAD's commit hash, or "unknown" outside a repository / before the first commit."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_card(
    *,
    name: str,
    onnx_path: Path,
    symbols: list[str],
    interval: str,
    window: int,
    teacher: NetworkSpec,
    student: NetworkSpec,
    distillation: dict[str, Any],
    metrics: dict[str, Any],
    data_span: dict[str, Any],
    feature_reference: FeatureReference | None = None,
    version: str = "1.0.0",
) -> ModelCard:
    """The DESIGN §5 model card for an exported file (sha256 taken from the bytes on disk)."""
    n_f = len(fx.FEATURE_NAMES)
    return ModelCard(
        name=name,
        version=version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        symbols=symbols,
        interval=interval,
        window=window,
        feature_names=list(fx.FEATURE_NAMES),
        feature_spec_hash=fx.FEATURE_SPEC_HASH,
        inputs=[TensorSpec(name=INPUT_NAME, shape=["batch", n_f, window])],
        outputs=[
            *(TensorSpec(name=n, shape=["batch"]) for n in PROB_OUTPUTS),
            TensorSpec(name="logits", shape=["batch", len(HEADS), 2]),
        ],
        opset=OPSET,
        sha256=sha256_file(onnx_path),
        onnx_file=onnx_path.name,
        teacher=teacher,
        student=student,
        distillation=distillation,
        metrics=metrics,
        data_span=data_span,
        feature_reference=feature_reference,
        git_commit=git_commit(),
    )


def export_student(
    student: nn.Module,
    onnx_path: str | Path,
    parity_x: NDArray[np.float32],
    card_fields: dict[str, Any],
) -> tuple[ModelCard, dict[str, float]]:
    """Export, check, compare with torch on `parity_x`, measure latency, write the card.

    `card_fields` are :func:`build_card`'s keyword arguments except `onnx_path`; the measured
    parity error and single-row latency are added to the card's metrics.
    """
    path = Path(onnx_path)
    student = student.eval()
    export_onnx(student, path, parity_x.shape[1], parity_x.shape[2])
    check_onnx(path)
    err = parity(student, path, parity_x)
    lat = ort_latency_us(path, parity_x[:1])
    fields = dict(card_fields)
    fields["metrics"] = {
        **fields.get("metrics", {}),
        "onnx_parity_max_abs": err,
        "ort_single_row_us": lat,
    }
    card = build_card(onnx_path=path, **fields)
    card.save(path.with_suffix(".json"))
    return card, {"parity_max_abs": err, "latency_us": lat}


def feature_reference(pool: Any, train_rows: NDArray[np.int64]) -> FeatureReference:
    """Per-feature quantiles (deciles 0..1) of the feature rows the training windows read."""
    from training.data.dataset import feature_quantiles, feature_rows_count

    return FeatureReference(
        quantiles=list(REFERENCE_QUANTILES),
        values=feature_quantiles(pool, train_rows, REFERENCE_QUANTILES),
        rows=feature_rows_count(pool, train_rows),
    )


def card_metrics(
    student: nn.Module,
    test: Any,
    teacher: nn.Module | None = None,
    pairs: Sequence[Sequence[int]] = (),
    cka_rows: int = 1000,
) -> dict[str, Any]:
    """The card's test metrics: per head (``direction``, ``volatility``: accuracy, log loss,
    Brier, AUC, ... and agreement with the teacher), ``teacher_test`` per head,
    ``per_symbol`` {symbol: {head: metrics}}, and linear CKA per matched layer pair.

    ``test`` is a :class:`training.data.dataset.Split`; ``teacher`` a network or an ensemble.
    """
    from training.analysis import linear_cka
    from training.experiments.fit import network_outputs, predict_proba
    from training.scoring.metrics import head_reports, per_symbol_reports

    p = predict_proba(student, test.x)
    t = predict_proba(teacher, test.x) if teacher is not None else None
    metrics: dict[str, Any] = dict(head_reports(test.y, p, t))
    metrics["per_symbol"] = per_symbol_reports(test.y, p, test.symbols(), t)
    metrics["n"] = len(test)
    if teacher is not None and t is not None:
        metrics["teacher_test"] = head_reports(test.y, t)
        rows = np.linspace(0, len(test) - 1, min(cka_rows, len(test))).astype(np.int64)
        t_layers = sorted({int(a) for a, _ in pairs})
        s_layers = sorted({int(b) for _, b in pairs})
        _, tf = network_outputs(teacher, test.x[rows], t_layers)
        _, sf = network_outputs(student, test.x[rows], s_layers)
        metrics["cka"] = {
            f"t{a}-s{b}": linear_cka(_flat(tf[int(a)]), _flat(sf[int(b)])) for a, b in pairs
        }
        metrics["cka_n"] = int(rows.size)
    return metrics


def _flat(f: Tensor) -> NDArray[np.float64]:
    """(N, C[, T]) feature → (N, C·T) float64 for CKA."""
    return f.reshape(f.shape[0], -1).double().numpy()


def teacher_network_spec(teacher: nn.Module | None) -> NetworkSpec:
    """The card's teacher entry: a network's spec, or an ensemble's members and total."""
    from training.nets.ensemble import Ensemble
    from training.nets.networks import NetSpec, count_parameters

    if teacher is None:
        return NetworkSpec(family="none", arch={}, params=0)
    if isinstance(teacher, Ensemble):
        return NetworkSpec(
            family="ensemble",
            arch={
                "members": [s.to_dict() for s in teacher.specs],
                "feature_member": teacher.feature_member,
                "member_params": teacher.member_param_count(),
            },
            params=teacher.param_count(),
        )
    spec: NetSpec = teacher.spec  # type: ignore[assignment]
    return NetworkSpec(family=spec.family, arch=spec.to_dict(), params=count_parameters(teacher))


def export_checkpoint(
    ckpt_path: Path, out: Path, name: str | None = None, fixture: str | Path | None = None
) -> ModelCard:
    """Export a student checkpoint of `python -m training distill` with a full model card.

    Per-head test metrics, agreement with the checkpoint's teacher (a network or an ensemble
    directory) and CKA per layer pair are recomputed on the checkpoint's own (chronological,
    purged) test split; the feature reference comes from its training rows.
    """
    from training.config import from_dict
    from training.data.dataset import load_dataset
    from training.distill.train import load_checkpoint, load_teacher_path, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    student = model_from_checkpoint(ckpt)
    ds = load_dataset(from_dict(ckpt["config"]).data)
    teacher_info = ckpt.get("teacher") or {}
    teacher = None
    if teacher_info.get("path") and Path(teacher_info["path"]).exists():
        teacher = load_teacher_path(teacher_info["path"])
    metrics = card_metrics(student, ds.test, teacher, ckpt.get("pairs", []))
    span = ds.span()
    test_span = span["test"]
    assert isinstance(test_span, dict)
    assert ds.pool is not None and ds.train_rows is not None
    card, _ = export_student(
        student,
        out,
        ds.test.x[:64],
        {
            "name": name or out.stem,
            "symbols": list(ds.symbols),
            "interval": ds.interval,
            "window": int(ckpt["window"]),
            "teacher": teacher_network_spec(teacher),
            "student": NetworkSpec(
                family=ckpt["spec"]["family"], arch=ckpt["spec"], params=int(ckpt["params"])
            ),
            "distillation": {"config": ckpt["config"], "pairs": ckpt.get("pairs", [])},
            "metrics": metrics,
            "data_span": {**span, "test_first_ms": test_span["first_ms"]},
            "feature_reference": feature_reference(ds.pool, ds.train_rows),
        },
    )
    if fixture is not None:
        write_parity_fixture(student, card, ds.test.x[:64], fixture)
    return card


def write_parity_fixture(
    student: nn.Module, card: ModelCard, x: NDArray[np.float32], path: str | Path
) -> Path:
    """Save x and torch's outputs for it (every graph output) with the export's sha256: the
    fixture tests/service/model/test_committed_model.py checks onnxruntime against, without
    torch."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"x": x, "sha256": np.array(card.sha256)}
    arrays.update(torch_outputs(student, x))
    np.savez_compressed(out, **arrays)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export a student checkpoint written by `python -m training distill`."""
    ap = argparse.ArgumentParser(prog="python -m training export", description=__doc__)
    ap.add_argument("--checkpoint", required=True, help="student checkpoint (.pt)")
    ap.add_argument("--out", default="models/student_pooled_5m.onnx", help="ONNX file to write")
    ap.add_argument("--name", default="", help="model name (default: the file stem)")
    ap.add_argument(
        "--fixture",
        default="",
        help="also write the ONNX parity fixture here (tests/fixtures/student_parity.npz for "
        "the committed model)",
    )
    args = ap.parse_args(argv)
    card = export_checkpoint(
        Path(args.checkpoint), Path(args.out), args.name or None, args.fixture or None
    )
    print(f"wrote {args.out} ({card.sha256[:12]}…) and {Path(args.out).with_suffix('.json')}")
    return 0
