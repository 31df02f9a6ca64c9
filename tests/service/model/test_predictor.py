"""Predictor: exact outputs on real onnxruntime, and refusal of every mismatching model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from service.features import N_FEATURES, WINDOW
from service.model.card import ModelCard, ModelCardError, sha256_file
from service.model.predictor import ModelSlot, Predictor, session_options


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize("output_shape", ["batch", "batch1"])
def test_predict_matches_hand_computed_linear_model(
    tmp_path: Path, output_shape: str, model_writer: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path, output_shape=output_shape, scale=0.05)
    pred = Predictor.load(fm.onnx_path)
    rng = np.random.default_rng(7)
    for _ in range(5):
        window = rng.standard_normal((N_FEATURES, WINDOW))  # float64, as the pipeline has
        expected = _sigmoid(float(window.astype(np.float32).reshape(-1) @ fm.weight))
        assert pred.predict(window) == pytest.approx(expected, abs=1e-6)
        batch = pred.predict_batch(window[None].astype(np.float32))
        assert pred.predict(window) == pytest.approx(float(batch[0]), abs=1e-7)


def test_predict_reads_a_strided_window_view(
    tmp_path: Path, model_writer: Callable[..., Any]
) -> None:
    """The pipeline passes a non-contiguous (F, T) view; it must be read correctly."""
    fm = model_writer(tmp_path, scale=0.05)
    pred = Predictor.load(fm.onnx_path)
    big = np.random.default_rng(1).standard_normal((N_FEATURES, 2 * WINDOW))
    view = big[:, 5 : 5 + WINDOW]
    assert not view.flags["C_CONTIGUOUS"]
    assert pred.predict(view) == pytest.approx(pred.predict(np.ascontiguousarray(view)), abs=0)


def test_session_is_tuned_for_one_row() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode.name == "ORT_SEQUENTIAL"
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"


def test_refuses_model_whose_bytes_differ_from_card(
    tmp_path: Path, model_writer: Callable[..., Any], onnx_builder: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path)
    other = onnx_builder(fm.weight * 2, 0.0)
    onnx.save(other, str(fm.onnx_path))  # the card still has the old sha256
    with pytest.raises(ModelCardError, match="sha256"):
        Predictor.load(fm.onnx_path)


def test_refuses_model_with_other_feature_spec(
    tmp_path: Path, model_writer: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path, spec_hash="0" * 64)
    with pytest.raises(ModelCardError, match="feature-spec hash"):
        Predictor.load(fm.onnx_path)


def test_refuses_missing_model_or_card(tmp_path: Path, model_writer: Callable[..., Any]) -> None:
    with pytest.raises(ModelCardError, match="APPRENTICE_MODEL"):
        Predictor.load(tmp_path / "nope.onnx")
    fm = model_writer(tmp_path)
    fm.card_path.unlink()
    with pytest.raises(ModelCardError, match="not found"):
        Predictor.load(fm.onnx_path)


def test_refuses_card_with_other_feature_names(
    tmp_path: Path, model_writer: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path)
    card = ModelCard.load(fm.card_path)
    names = list(reversed(card.feature_names))
    card.model_copy(update={"feature_names": names}).save(fm.card_path)
    with pytest.raises(ModelCardError, match="feature_names"):
        Predictor.load(fm.onnx_path)


def test_refuses_graph_without_prob_up(
    tmp_path: Path, model_writer: Callable[..., Any], onnx_builder: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path)
    model = onnx_builder(fm.weight, 0.0)
    for node in model.graph.node:
        node.output[:] = ["p_other" if o == "prob_up" else o for o in node.output]
    model.graph.output[0].name = "p_other"
    onnx.save(model, str(fm.onnx_path))
    card = ModelCard.load(fm.card_path)
    card.model_copy(update={"sha256": sha256_file(fm.onnx_path)}).save(fm.card_path)
    with pytest.raises(ModelCardError, match="prob_up"):
        Predictor.load(fm.onnx_path)


def test_model_slot_swaps_atomically(tmp_path: Path, model_writer: Callable[..., Any]) -> None:
    a = Predictor.load(model_writer(tmp_path / "a", version="1").onnx_path)
    b = Predictor.load(model_writer(tmp_path / "b", version="2", seed=3).onnx_path)
    slot = ModelSlot(a)
    assert slot.swap(b) is a
    assert slot.current is b and slot.current.identity.version == "2"


def test_serves_both_heads_by_name(tmp_path: Path, model_writer: Callable[..., Any]) -> None:
    fm = model_writer(tmp_path, scale=0.05)
    pred = Predictor.load(fm.onnx_path)
    window = np.random.default_rng(2).standard_normal((N_FEATURES, WINDOW))
    flat = window.astype(np.float32).reshape(-1)
    assert pred.predict(window) == pytest.approx(_sigmoid(float(flat @ fm.weight)), abs=1e-6)
    assert pred.high_vol == pytest.approx(_sigmoid(float(flat @ fm.weight_vol)), abs=1e-6)
    heads = pred.predict_heads(window[None].astype(np.float32))
    assert heads["volatility"][0] == pytest.approx(pred.high_vol, abs=1e-7)
    assert heads["direction"][0] == pytest.approx(pred.predict(window), abs=1e-7)


def test_refuses_a_model_without_the_volatility_head(
    tmp_path: Path, model_writer: Callable[..., Any]
) -> None:
    fm = model_writer(tmp_path, with_vol=False)
    with pytest.raises(ModelCardError, match="no 'prob_high_vol' output"):
        Predictor.load(fm.onnx_path)
