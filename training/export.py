"""ONNX export of the student (DESIGN section 5), timm-style: export, check, compare.

Only the student travels: projection heads and the teacher stay behind. The graph takes raw
features "features" (batch, F, T) float32 — normalisation is the network's first layer — and
returns "prob_up" (batch,) = softmax(logits)[:, 1] and "logits" (batch, 2). One self-contained
file at opset 18 (no external .onnx.data), `onnx.checker` full check, then onnxruntime must
match torch within 1e-5 on a fixed batch before the model card is written beside it.

`python -m training export --checkpoint runs/<name>/student.pt --out models/<name>.onnx`
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
from service.model_card import ModelCard, NetworkSpec, TensorSpec, sha256_file

F32 = NDArray[np.float32]
OPSET = 18
INPUT_NAME = "features"
OUTPUT_NAMES = ("prob_up", "logits")
PARITY_ATOL = 1e-5


class ProbUp(nn.Module):
    """Wraps a student so the graph outputs the up-probability and the raw logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, F, T) -> (B,), (B, 2)
        logits = self.net(x)
        return torch.softmax(logits, dim=1)[:, 1], logits


def export_onnx(student: nn.Module, path: str | Path, n_features: int, window: int) -> Path:
    """Export `student` (eval mode) to one self-contained ONNX file with a dynamic batch."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ProbUp(student).eval()
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
    return out


def check_onnx(path: str | Path) -> None:
    """`onnx.checker` full check (types and shapes inferred) plus the I/O contract."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != [INPUT_NAME] or names_out[:1] != [OUTPUT_NAMES[0]]:
        raise ValueError(f"{path}: unexpected graph I/O {names_in} -> {names_out}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ValueError(f"{path}: opset {opset} < 17")


@torch.no_grad()
def torch_outputs(student: nn.Module, x: NDArray[np.float32]) -> tuple[F32, F32]:
    """prob_up (B,) and logits (B, 2) from torch for windows x (B, F, T)."""
    wrapper = ProbUp(student).eval()
    p, logits = wrapper(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return p.numpy(), logits.numpy()


def ort_outputs(path: str | Path, x: NDArray[np.float32]) -> tuple[F32, F32]:
    """prob_up and logits from onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    p, logits = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
    return np.asarray(p), np.asarray(logits)


def parity(student: nn.Module, path: str | Path, x: NDArray[np.float32]) -> float:
    """Max |onnxruntime − torch| over both outputs; raises if above 1e-5."""
    tp, tl = torch_outputs(student, x)
    op, ol = ort_outputs(path, x)
    np.testing.assert_allclose(op, tp, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(ol, tl, atol=PARITY_ATOL, rtol=0)
    return float(max(np.abs(op - tp).max(), np.abs(ol - tl).max()))


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
            TensorSpec(name=OUTPUT_NAMES[0], shape=["batch"]),
            TensorSpec(name=OUTPUT_NAMES[1], shape=["batch", 2]),
        ],
        opset=OPSET,
        sha256=sha256_file(onnx_path),
        onnx_file=onnx_path.name,
        teacher=teacher,
        student=student,
        distillation=distillation,
        metrics=metrics,
        data_span=data_span,
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


def export_checkpoint(ckpt_path: Path, out: Path, name: str | None = None) -> ModelCard:
    """Export a student checkpoint of `python -m training distill` with a full model card.

    Test-split metrics, agreement with the checkpoint's teacher and CKA per layer pair are
    recomputed on the checkpoint's own (chronological, purged) test split.
    """
    from training.analysis import linear_cka
    from training.config import DataConfig
    from training.data import load_dataset
    from training.experiment import network_outputs, predict_proba
    from training.metrics_eval import agreement, classification_report
    from training.train import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    student = model_from_checkpoint(ckpt)
    data_cfg = DataConfig(**ckpt["config"]["data"])
    ds = load_dataset(data_cfg)
    p = predict_proba(student, ds.test.x)
    metrics: dict[str, Any] = dict(classification_report(ds.test.y, p).as_dict())
    teacher_info = ckpt.get("teacher") or {}
    teacher_spec = NetworkSpec(family="none", arch={}, params=0)
    if teacher_info.get("path") and Path(teacher_info["path"]).exists():
        teacher = model_from_checkpoint(teacher_info["path"])
        metrics["agreement_with_teacher"] = agreement(p, predict_proba(teacher, ds.test.x))
        rows = np.linspace(0, len(ds.test) - 1, min(1000, len(ds.test))).astype(np.int64)
        n_t = len(teacher_info["spec"]["channels"])
        n_s = len(ckpt["spec"]["channels"])
        _, tf = network_outputs(teacher, ds.test.x[rows], range(n_t))
        _, sf = network_outputs(student, ds.test.x[rows], range(n_s))
        metrics["cka"] = {
            f"t{a}-s{b}": linear_cka(tf[a].double().numpy(), sf[b].double().numpy())
            for a, b in ckpt.get("pairs", [])
        }
        metrics["cka_n"] = int(rows.size)
        teacher_spec = NetworkSpec(
            family=teacher_info["spec"]["family"],
            arch=teacher_info["spec"],
            params=int(teacher_info["params"]),
        )
    span = ds.span()
    test_span = span["test"]
    assert isinstance(test_span, dict)
    card, _ = export_student(
        student,
        out,
        ds.test.x[:64],
        {
            "name": name or out.stem,
            "symbols": [ckpt["symbol"]],
            "interval": ckpt["interval"],
            "window": int(ckpt["window"]),
            "teacher": teacher_spec,
            "student": NetworkSpec(
                family=ckpt["spec"]["family"], arch=ckpt["spec"], params=int(ckpt["params"])
            ),
            "distillation": {"config": ckpt["config"], "pairs": ckpt.get("pairs", [])},
            "metrics": metrics,
            "data_span": {**span, "test_first_ms": test_span["first_ms"]},
        },
    )
    return card


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export a student checkpoint written by `python -m training distill`."""
    ap = argparse.ArgumentParser(prog="python -m training export", description=__doc__)
    ap.add_argument("--checkpoint", required=True, help="student checkpoint (.pt)")
    ap.add_argument("--out", default="models/student_pooled_5m.onnx", help="ONNX file to write")
    ap.add_argument("--name", default="", help="model name (default: the file stem)")
    args = ap.parse_args(argv)
    card = export_checkpoint(Path(args.checkpoint), Path(args.out), args.name or None)
    print(f"wrote {args.out} ({card.sha256[:12]}…) and {Path(args.out).with_suffix('.json')}")
    return 0
