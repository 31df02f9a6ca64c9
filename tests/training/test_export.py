"""ONNX export of a student: single file, checker, parity with torch, dynamic batch, card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH, WINDOW
from service.model.card import ModelCard, NetworkSpec, sha256_file, verify_model
from training.export import INPUT_NAME, OUTPUT_NAMES, STACK_TRACE, export_student, ort_outputs
from training.nets.networks import build_network, count_parameters, default_spec

F = len(FEATURE_NAMES)
Exported = tuple[Any, Path, ModelCard]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = default_spec("tcn", "student", F, WINDOW)
    net = build_network(spec)
    rng = np.random.default_rng(0)
    net.norm.set_stats(rng.normal(0, 0.01, F), rng.uniform(0.5, 2.0, F))
    # one training step so BatchNorm running stats are not the identity
    net.train()
    net(torch.randn(64, F, WINDOW)).sum().backward()
    net.eval()
    x = rng.normal(0, 1, (16, F, WINDOW)).astype(np.float32)
    path = tmp_path_factory.mktemp("models") / "student_test.onnx"
    teacher_spec = default_spec("tcn", "teacher", F, WINDOW)
    card, measured = export_student(
        net,
        path,
        x,
        {
            "name": "student_test",
            "symbols": ["BTCUSDT"],
            "interval": "5",
            "window": WINDOW,
            "teacher": NetworkSpec(family="tcn", arch=teacher_spec.to_dict(), params=1),
            "student": NetworkSpec(family="tcn", arch=spec.to_dict(), params=count_parameters(net)),
            "distillation": {"method": "combined"},
            "metrics": {"accuracy": 0.5},
            "data_span": {"test_first_ms": 0},
        },
    )
    assert measured["parity_max_abs"] <= 1e-5
    return net, path, card


def test_single_self_contained_file_with_contract(exported: Exported) -> None:
    _, path, _ = exported
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".data"] == []
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert list(OUTPUT_NAMES[:2]) == ["prob_up", "prob_high_vol"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [F, WINDOW]


def test_the_file_does_not_depend_on_where_the_checkout_lies(exported: Exported) -> None:
    """The exporter's per-node stack traces name source files by absolute path; they are
    dropped, so the same network exports to the same bytes from any directory."""
    import training

    _, path, _ = exported
    checkout = str(Path(training.__file__).resolve().parents[1])
    assert checkout.encode() not in path.read_bytes()
    keys = {m.key for n in onnx.load(str(path)).graph.node for m in n.metadata_props}
    assert STACK_TRACE not in keys


def test_ort_matches_torch_on_other_batch_sizes(exported: Exported) -> None:
    net, path, _ = exported
    for n in (1, 7):
        x = np.random.default_rng(n).normal(0, 3, (n, F, WINDOW)).astype(np.float32)
        out = ort_outputs(path, x)
        with torch.no_grad():
            ref = net(torch.from_numpy(x))  # (n, 2 heads, 2)
        assert out["prob_up"].shape == (n,) and out["prob_high_vol"].shape == (n,)
        assert out["prob_up"].dtype == np.float32 and out["prob_high_vol"].dtype == np.float32
        np.testing.assert_allclose(out["logits"], ref.numpy(), atol=1e-5)
        probs = torch.softmax(ref, -1)[..., 1].numpy()
        np.testing.assert_allclose(out["prob_up"], probs[:, 0], atol=1e-5)
        np.testing.assert_allclose(out["prob_high_vol"], probs[:, 1], atol=1e-5)
        assert not np.allclose(out["prob_up"], out["prob_high_vol"])


def test_normalisation_is_inside_the_graph(exported: Exported) -> None:
    import copy

    net, path, _ = exported
    x = np.random.default_rng(5).normal(0, 1, (3, F, WINDOW)).astype(np.float32)
    mean, std = net.norm.mean.numpy(), net.norm.std.numpy()
    bare = copy.deepcopy(net)
    bare.norm.set_stats(np.zeros(F), np.ones(F))  # identity normalisation
    with torch.no_grad():
        pre_normalised = bare(torch.from_numpy((x - mean) / std))
    logits = ort_outputs(path, x)["logits"]  # the graph gets raw features
    np.testing.assert_allclose(logits, pre_normalised.numpy(), atol=1e-5)


def test_card_written_beside_the_model(exported: Exported) -> None:
    _, path, card = exported
    loaded = ModelCard.load(path.with_suffix(".json"))
    assert loaded.sha256 == sha256_file(path) == card.sha256
    assert loaded.feature_spec_hash == FEATURE_SPEC_HASH
    assert loaded.feature_names == list(FEATURE_NAMES)
    assert loaded.opset == 18 and loaded.window == WINDOW
    assert loaded.inputs[0].shape == ["batch", F, WINDOW]
    assert "ort_single_row_us" in loaded.metrics and "onnx_parity_max_abs" in loaded.metrics
    assert [o.name for o in loaded.outputs] == ["prob_up", "prob_high_vol", "logits"]
    assert loaded.outputs[1].shape == ["batch"]
    verify_model(path, loaded, FEATURE_SPEC_HASH)


def test_parity_check_fails_on_a_different_model(exported: Exported) -> None:
    import copy

    from training.export import parity

    net, path, _ = exported
    other = copy.deepcopy(net)
    with torch.no_grad():
        other.head.bias[3] += 0.5  # the volatility head only
    x = np.random.default_rng(9).normal(0, 1, (4, F, WINDOW)).astype(np.float32)
    assert parity(net, path, x) <= 1e-5
    with pytest.raises(AssertionError, match="prob_high_vol"):
        parity(other, path, x)


def test_export_cli_from_a_distill_checkpoint(tmp_path: Path) -> None:
    from training.config import ExperimentConfig
    from training.distill.train import run
    from training.export import main

    base = ExperimentConfig().replace(
        **{
            "data.symbols": ["BTCUSDT", "XRPUSDT"],
            "data.last_bars": 1500,
            "train.epochs": 1,
            "train.max_batches": 2,
            "train.progress": False,
            "run.out_dir": str(tmp_path),
            "run.threads": 1,
        }
    )
    teacher = run(base.replace(**{"run.name": "teacher"}), role="teacher").checkpoint
    student_cfg = base.replace(
        **{"run.name": "student", "distill.method": "fitnet", "distill.teacher": str(teacher)}
    )
    student = run(student_cfg, role="student").checkpoint
    out = tmp_path / "models" / "cli_student.onnx"
    assert main(["--checkpoint", str(student), "--out", str(out)]) == 0
    card = ModelCard.load(out.with_suffix(".json"))
    verify_model(out, card, FEATURE_SPEC_HASH)
    assert card.teacher.params > card.student.params
    assert card.symbols == ["BTCUSDT", "XRPUSDT"]
    for head in ("direction", "volatility"):
        m = card.metrics[head]
        assert 0.0 <= m["agreement_with_teacher"] <= 1.0
        assert {"accuracy", "log_loss", "brier", "auc"} <= set(m)
        assert set(card.metrics["teacher_test"][head]) >= {"accuracy", "auc"}
        assert set(card.metrics["per_symbol"]["XRPUSDT"][head]) >= {"auc", "n"}
    assert set(card.metrics["cka"]) and card.metrics["cka_n"] > 0
    assert card.data_span["test_first_ms"] > 0
    ref = card.feature_reference
    assert ref is not None and ref.quantiles[0] == 0.0 and ref.quantiles[-1] == 1.0
    assert len(ref.quantiles) == 11 and list(ref.values) == list(FEATURE_NAMES)
    assert all(np.all(np.diff(v) >= 0) for v in ref.values.values()) and ref.rows > 0
