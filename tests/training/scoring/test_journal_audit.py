"""The signal journal as a data set (export) and the offline teacher audit on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service import features as fx
from service.market.kline_io import load_bundled, load_klines
from service.model.card import HEADS
from service.monitor.signal_journal import KlineRow, SignalJournal, SignalRow
from training.data import journal as journal_data
from training.scoring.audit import run_audit

N = 300
FIRST_SIGNAL = 78  # BARS_TO_FIRST_SIGNAL - 1


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """A journal as the service writes it: BTCUSDT klines, signals once windows are full."""
    t = load_bundled("BTCUSDT", "5").slice(0, N)
    j = SignalJournal(tmp_path / "state")
    j.open()
    klines = [
        KlineRow(
            "BTCUSDT",
            "5",
            int(t.start[i]),
            float(t.open[i]),
            float(t.high[i]),
            float(t.low[i]),
            float(t.close[i]),
            float(t.volume[i]),
            None,
            "ws" if i >= 200 else "rest",
        )
        for i in range(N)
    ]
    rng = np.random.default_rng(0)
    signals = [
        SignalRow(
            "BTCUSDT",
            "5",
            int(t.start[i]),
            float(rng.random()),
            float(rng.random()),
            "flat",
            i >= 200,
            "student_x",
            "1",
            "sha",
            0,
        )
        for i in range(FIRST_SIGNAL, N)
    ]
    j.write(klines, signals)
    j.close()
    return tmp_path / "state"


def test_export_reads_back_as_training_data(state_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert journal_data.main(["--state-dir", str(state_dir), "--out", str(out)]) == 0
    path = out / "bybit_linear_BTCUSDT_5m_journal.csv"
    table = load_klines(path)  # symbol and interval from the name, validated
    ref = load_bundled("BTCUSDT", "5").slice(0, N)
    assert table.symbol == "BTCUSDT" and table.interval == "5" and len(table) == N
    np.testing.assert_array_equal(table.start, ref.start)
    np.testing.assert_array_equal(table.close, ref.close)


def test_export_without_journal_is_an_error(tmp_path: Path) -> None:
    assert journal_data.main(["--state-dir", str(tmp_path), "--out", str(tmp_path)]) == 2


class MirrorTeacher:
    """Agrees with the served direction probability, opposes the served volatility one."""

    def __init__(self, served_up: dict[int, float], served_vol: dict[int, float]) -> None:
        self.calls: list[np.ndarray] = []
        self.up = served_up
        self.vol = served_vol

    def predict_proba(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(x)
        keys = sorted(self.up)[-x.shape[0] :]  # the live ones, oldest first
        return {
            "direction": np.array([self.up[k] for k in keys]),
            "volatility": np.array([1.0 - self.vol[k] for k in keys]),
        }


def test_audit_agreement_windows_and_scores(state_dir: Path) -> None:
    j = SignalJournal(state_dir)
    j.open()
    sigs = j.signals("BTCUSDT", "5")
    j.close()
    teacher = MirrorTeacher(
        {s.candle_start: s.probability_up for s in sigs},
        {s.candle_start: s.probability_high_vol for s in sigs},
    )
    report = run_audit(state_dir, teacher)
    (sym,) = report["symbols"]
    assert sym["signals"] == N - 200 and sym["live"] == N - 200  # live data only
    assert report["heads"]["direction"]["agreement"] == 1.0
    assert report["heads"]["volatility"]["agreement"] == 0.0
    # the teacher saw the service's windows: batch features of the journaled klines
    t = load_bundled("BTCUSDT", "5").slice(0, N)
    feats = fx.batch_features(t.open, t.high, t.low, t.close, t.volume)
    want = fx.make_windows(feats, np.arange(200, N))
    np.testing.assert_array_equal(teacher.calls[0], want)
    # every signal but the last has its outcome in the journal
    for head in HEADS:
        assert sym[head]["scored"] == N - 200 - 1
        assert set(sym[head]["student"]) == {"accuracy", "log_loss", "auc"}


def test_audit_cli_with_a_saved_ensemble(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real teacher path: an Ensemble saved to disk, loaded by the CLI, its agreement with
    the served probabilities equal to metrics_eval.agreement, next to the card's figure."""
    import torch

    from service.model.card import ModelCard
    from training.nets.ensemble import Ensemble
    from training.nets.networks import NetSpec, build_network
    from training.scoring import audit
    from training.scoring import metrics as metrics_eval

    torch.manual_seed(0)
    members = [
        build_network(NetSpec("tcn", 12, 32, (8, 8))),
        build_network(NetSpec("mlp", 12, 32, (16, 8))),
    ]
    ens = Ensemble(members)
    ens.save(tmp_path / "teacher")
    card = ModelCard.load(Path(audit.MODELS_DIR) / "student_pooled_5m.json")
    metrics = {h: {**card.metrics.get(h, {}), "agreement_with_teacher": 0.8} for h in HEADS}
    card_path = card.model_copy(update={"metrics": metrics}).save(tmp_path / "card.json")
    argv = ["--state-dir", str(state_dir), "--teacher", str(tmp_path / "teacher")]
    assert audit.main([*argv, "--card", str(card_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    j = SignalJournal(state_dir)
    j.open()
    live = [s for s in j.signals("BTCUSDT", "5") if s.live]
    j.close()
    t = load_bundled("BTCUSDT", "5").slice(0, N)
    feats = fx.batch_features(t.open, t.high, t.low, t.close, t.volume)
    p = ens.predict_proba(fx.make_windows(feats, np.arange(200, N)))
    for head, served in (
        ("direction", [s.probability_up for s in live]),
        ("volatility", [s.probability_high_vol for s in live]),
    ):
        got = report["heads"][head]
        assert got["n"] == len(live) == N - 200
        assert got["agreement"] == pytest.approx(metrics_eval.agreement(served, p[head]))
        assert got["test_agreement"] == 0.8
    assert audit.main([*argv, "--card", str(card_path)]) == 0
    assert "agreement on live data" in capsys.readouterr().out
