"""ONNX export of a student: single file, checker, parity with torch, dynamic batch, card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH, WINDOW
from service.model_card import ModelCard, NetworkSpec, sha256_file, verify_model
from training.export import INPUT_NAME, OUTPUT_NAMES, export_student, ort_outputs
from training.networks import build_network, count_parameters, default_spec

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
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [F, WINDOW]


def test_ort_matches_torch_on_other_batch_sizes(exported: Exported) -> None:
    net, path, _ = exported
    for n in (1, 7):
        x = np.random.default_rng(n).normal(0, 3, (n, F, WINDOW)).astype(np.float32)
        p, logits = ort_outputs(path, x)
        with torch.no_grad():
            ref = net(torch.from_numpy(x))
        assert p.shape == (n,)
        np.testing.assert_allclose(logits, ref.numpy(), atol=1e-5)
        np.testing.assert_allclose(p, torch.softmax(ref, 1)[:, 1].numpy(), atol=1e-5)


def test_normalisation_is_inside_the_graph(exported: Exported) -> None:
    import copy

    net, path, _ = exported
    x = np.random.default_rng(5).normal(0, 1, (3, F, WINDOW)).astype(np.float32)
    mean, std = net.norm.mean.numpy(), net.norm.std.numpy()
    bare = copy.deepcopy(net)
    bare.norm.set_stats(np.zeros(F), np.ones(F))  # identity normalisation
    with torch.no_grad():
        pre_normalised = bare(torch.from_numpy((x - mean) / std))
    _, logits = ort_outputs(path, x)  # the graph gets raw features
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
    verify_model(path, loaded, FEATURE_SPEC_HASH)


def test_export_cli_from_a_distill_checkpoint(tmp_path: Path) -> None:
    from training.config import ExperimentConfig
    from training.export import main
    from training.train import run

    base = ExperimentConfig().replace(
        **{
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
    assert 0.0 <= card.metrics["agreement_with_teacher"] <= 1.0
    assert set(card.metrics["cka"]) and card.metrics["cka_n"] > 0
    assert card.data_span["test_first_ms"] > 0
