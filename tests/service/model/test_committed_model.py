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
from service.model.card import HEAD_OUTPUTS, HEADS, ModelCard, sha256_file, verify_model

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "student_pooled_5m.onnx"
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
    assert [o.name for o in card.outputs[:2]] == [HEAD_OUTPUTS[h] for h in HEADS]
    assert card.inputs[0].name == "features" and card.outputs[0].name == "prob_up"
    verify_model(MODEL, card, FEATURE_SPEC_HASH)
    assert card.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT"]
    for head in HEADS:  # per-head test metrics (DESIGN section 5)
        for key in ("accuracy", "log_loss", "brier", "auc"):
            assert key in card.metrics[head], (head, key)
        if card.teacher.params > 0:  # a distilled student also carries its teacher's view
            assert "agreement_with_teacher" in card.metrics[head]
            assert head in card.metrics["teacher_test"]
    if card.teacher.params > 0:
        assert card.metrics["cka"]
    ref = card.feature_reference
    assert ref is not None and list(ref.values) == list(FEATURE_NAMES)
    assert all(len(v) == len(ref.quantiles) for v in ref.values.values())
    assert not MODEL.with_name(MODEL.name + ".data").exists()  # one self-contained file


def test_onnx_parity_with_the_stored_torch_outputs() -> None:
    fx = np.load(FIXTURE)
    assert str(fx["sha256"]) == sha256_file(MODEL), "fixture was made for another export"
    x = fx["x"]
    assert x.dtype == np.float32 and x.shape[1:] == (len(FEATURE_NAMES), WINDOW)
    names = ["prob_up", "prob_high_vol", "logits"]
    for name, got in zip(names, _session().run(names, {"features": x}), strict=True):
        np.testing.assert_allclose(got, fx[name], atol=1e-5, rtol=0, err_msg=name)


def test_dynamic_batch_and_probability_range() -> None:
    x = np.load(FIXTURE)["x"]
    sess = _session()
    single = sess.run(["prob_up"], {"features": x[:1]})[0]
    many = sess.run(["prob_up"], {"features": x})[0]
    assert single.shape == (1,) and many.shape == (x.shape[0],)
    np.testing.assert_allclose(single[0], many[0], atol=1e-6)
    assert np.all((many > 0) & (many < 1))
