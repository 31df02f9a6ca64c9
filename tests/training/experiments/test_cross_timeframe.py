"""Setting C's teachers learn the student's 5-minute labels and differ only in what they read."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from service import features as fx
from service.market.klines import interval_ms
from training.data.series import calendar_folds, load_series, pooled_fold
from training.data.transfer import aligned_rows
from training.distill.distiller import Distiller
from training.experiments.common import Env
from training.experiments.config import load_report_config
from training.experiments.cross_timeframe import T1, T5, T15, reading, teacher_fold
from training.experiments.fit import CachedTeacher
from training.nets.networks import build_network
from training.progress import Progress


def _fold_and_minutes(n: int = 700) -> tuple[object, list]:
    s1 = load_series("BTCUSDT", "1", "", 5 * n)
    s5 = load_series("BTCUSDT", "5", "", 0)
    ok = aligned_rows(s5.times, interval_ms("5"), s1.times, interval_ms("1")) >= 0
    s5 = replace(s5, ends=s5.ends[ok][-n:])
    cf = calendar_folds(s5.times, interval_ms("5"), 1, 32, 0.25, 0.15)[0]
    return pooled_fold([s5], cf), [s1]


def test_every_teacher_reads_the_same_rows_with_the_five_minute_labels() -> None:
    pf5, s1s = _fold_and_minutes()
    for name, channels in ((T1, fx.N_FEATURES), (T15, 2 * fx.N_FEATURES), (T5, fx.N_FEATURES)):
        fold = teacher_fold(pf5, s1s, name)
        assert fold.train.x.shape == (len(pf5.train), channels, fx.WINDOW)
        np.testing.assert_array_equal(fold.train.y, pf5.train.y)  # 5-minute labels
        np.testing.assert_array_equal(fold.val.y, pf5.val.y)
        assert fold.mean.shape == (channels,)
    stacked = reading(pf5.test, s1s, T15).x
    one_minute = reading(pf5.test, s1s, T1).x
    # the 1m+5m teacher's input: the aligned 1-minute window, then the student's own window
    np.testing.assert_array_equal(stacked[:, : fx.N_FEATURES], one_minute)
    np.testing.assert_array_equal(stacked[:, fx.N_FEATURES :], pf5.test.x)
    # the 1-minute window ends at the same instant as the 5-minute one: its last bar starts
    # 4 minutes after the 5-minute window's last bar
    s1 = s1s[0]
    idx = aligned_rows(pf5.test.start_ms[:5], interval_ms("5"), s1.times, interval_ms("1"))
    assert np.all(s1.times[idx] == pf5.test.start_ms[:5] + 4 * interval_ms("1"))


def test_a_wider_teacher_is_probed_with_its_own_input() -> None:
    """The distiller probes each network's feature shapes with the input that network reads:
    a cached teacher of 24 channels gets projection heads onto its own feature shapes."""
    cfg = load_report_config(None)
    env = Env.make(cfg, Progress(1, None, enabled=False))
    spec = replace(env.t_spec, n_features=2 * fx.N_FEATURES)
    teacher = build_network(spec).eval()
    x = torch.zeros(4, 2 * fx.N_FEATURES, fx.WINDOW)
    with torch.no_grad():
        logits, feats = teacher.forward_with_features(x)  # type: ignore[operator]
    cached = CachedTeacher(teacher, logits, {k: f for k, f in enumerate(feats)})
    student = build_network(env.s_spec)
    distiller = Distiller(
        student,
        cached,
        replace(cfg.distill, method="fitnet"),
        epochs=1,
        input_shape=(fx.N_FEATURES, fx.WINDOW),
        window=fx.WINDOW,
    )
    assert distiller.pairs
    for (t, s), head in zip(distiller.pairs, distiller.heads, strict=True):
        out = head(torch.zeros(2, *student_shape(student, s)))
        assert out.shape[1:] == feats[t].shape[1:]


def student_shape(net: torch.nn.Module, layer: int) -> tuple[int, ...]:
    with torch.no_grad():
        _, fs = net.forward_with_features(torch.zeros(2, fx.N_FEATURES, fx.WINDOW))  # type: ignore[operator]
    return tuple(fs[layer].shape[1:])
