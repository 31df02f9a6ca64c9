"""The committed default student: card integrity and ONNX parity from the stored fixture.

Runs with onnxruntime and numpy only (no torch): the fixture holds a fixed input batch and
the outputs torch produced for it when `make train` exported the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH, WINDOW
from service.model_card import ModelCard, sha256_file, verify_model

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "student_btcusdt_5m.onnx"
CARD = MODEL.with_suffix(".json")
FIXTURE = ROOT / "tests" / "fixtures" / "student_parity.npz"

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="no committed student yet (make train)")


def _session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])


def test_card_matches_the_committed_file() -> None:
    card = ModelCard.load(CARD)
    assert card.sha256 == sha256_file(MODEL)
    assert card.feature_spec_hash == FEATURE_SPEC_HASH
    assert card.feature_names == list(FEATURE_NAMES)
    assert card.window == WINDOW and card.onnx_file == MODEL.name
    assert card.inputs[0].name == "features" and card.outputs[0].name == "prob_up"
    verify_model(MODEL, card, FEATURE_SPEC_HASH)
    for key in ("accuracy", "log_loss", "auc", "agreement_with_teacher", "cka"):
        assert key in card.metrics, key
    assert not MODEL.with_name(MODEL.name + ".data").exists()  # one self-contained file


def test_onnx_parity_with_the_stored_torch_outputs() -> None:
    fx = np.load(FIXTURE)
    assert str(fx["sha256"]) == sha256_file(MODEL), "fixture was made for another export"
    x = fx["x"]
    assert x.dtype == np.float32 and x.shape[1:] == (len(FEATURE_NAMES), WINDOW)
    p, logits = _session().run(["prob_up", "logits"], {"features": x})
    np.testing.assert_allclose(p, fx["prob_up"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits, fx["logits"], atol=1e-5, rtol=0)


def test_dynamic_batch_and_probability_range() -> None:
    x = np.load(FIXTURE)["x"]
    sess = _session()
    single = sess.run(["prob_up"], {"features": x[:1]})[0]
    many = sess.run(["prob_up"], {"features": x})[0]
    assert single.shape == (1,) and many.shape == (x.shape[0],)
    np.testing.assert_allclose(single[0], many[0], atol=1e-6)
    assert np.all((many > 0) & (many < 1))
