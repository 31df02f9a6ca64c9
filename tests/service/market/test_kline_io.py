"""Kline loading: both bundled layouts, validation errors, gaps, resampling, round trip."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from service.market.kline_io import (
    bundled_path,
    find_gaps,
    load_bundled,
    load_klines,
    resample,
    write_klines_csv,
)
from service.market.klines import Kline, KlineError, KlineTable, interval_ms


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_iso_layout(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "k.csv",
        "timestamp,open,high,low,close,volume\n"
        "2025-04-03 17:05:00+00:00,10,12,9,11,5\n"
        "2025-04-03 17:10:00+00:00,11,11.5,10,10.5,0\n",
    )
    t = load_klines(p, symbol="BTCUSDT", interval="5")
    assert t.start.tolist() == [1743699900000, 1743700200000]
    assert t.close.tolist() == [11.0, 10.5] and np.isnan(t.turnover).all()


def test_epoch_layout_with_local_datetime_ignored(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "k.csv",
        "timestamp,datetime,open,high,low,close,volume\n"
        "1762032300000,2025-11-01 23:25:00,1,2,0.5,1.5,3\n",
    )
    t = load_klines(p, symbol="XRPUSDT", interval="5")
    assert t.start.tolist() == [1762032300000]
    assert t.row(0) == Kline("XRPUSDT", "5", 1762032300000, 1, 2, 0.5, 1.5, 3, None, True)


def test_turnover_layout(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "k.csv",
        "timestamp,open,high,low,close,volume,turnover,date\n"
        "1605398400000,16060.0,16149.5,15769.0,15939.5,9541.401,152085161.2395,2020-11-15\n",
    )
    t = load_klines(p, symbol="BTCUSDT", interval="D")
    assert t.turnover.tolist() == [152085161.2395]


@pytest.mark.parametrize(
    ("rows", "rule", "row"),
    [
        ("1743699900000,10,12,9,11,5\n1743699900000,10,12,9,11.5,5\n", "duplicate", 3),
        ("1743700200000,10,12,9,11,5\n1743699900000,10,12,9,11,5\n", "not sorted", 3),
        ("1743699900001,10,12,9,11,5\n", "off the 5 grid", 2),
        ("1743699900000,10,12,9,13,5\n", "high < max(open, close)", 2),
        ("1743699900000,10,12,10.5,11,5\n", "low > min(open, close)", 2),
        ("1743699900000,-1,12,9,11,5\n", "prices must be positive", 2),
        ("1743699900000,10,8,9,11,5\n", "high < low", 2),
        ("1743699900000,10,12,9,abc,5\n", "unparsable", 2),
    ],
)
def test_bad_rows_name_file_row_and_rule(tmp_path: Path, rows: str, rule: str, row: int) -> None:
    p = _write(tmp_path / "bad.csv", "timestamp,open,high,low,close,volume\n" + rows)
    with pytest.raises(KlineError) as err:
        load_klines(p, symbol="BTCUSDT", interval="5")
    msg = str(err.value)
    assert str(p) in msg and f"row {row}" in msg and rule in msg


def test_missing_column(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.csv", "timestamp,open,high,low,close\n1,1,1,1,1\n")
    with pytest.raises(KlineError, match="missing column"):
        load_klines(p, symbol="BTCUSDT", interval="5")


def test_gaps_are_reported_not_invented(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "g.csv",
        "timestamp,open,high,low,close,volume\n"
        "1743699900000,10,12,9,11,5\n1743700800000,10,12,9,11,5\n1743701100000,10,12,9,11,5\n",
    )
    t = load_klines(p, symbol="BTCUSDT", interval="5")
    (gap,) = find_gaps(t)
    assert gap.missing == 2 and gap.after == 1743699900000
    assert len(t) == 3


def test_drop_last_unconfirmed() -> None:
    path = bundled_path("BTCUSDT", "5")
    full = load_klines(path)
    dropped = load_klines(path, drop_last_unconfirmed=True)
    assert len(dropped) == len(full) - 1
    assert dropped.start[-1] == full.start[-2]


def test_bundle_1m_resamples_to_5m_bar_for_bar() -> None:
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        r = resample(load_bundled(symbol, "1"), "5")
        b = load_bundled(symbol, "5")
        lo, hi = max(r.start[0], b.start[0]), min(r.start[-1], b.start[-1])
        a, e = r.between(lo, hi), b.between(lo, hi)
        assert len(a) == len(e) > 8000
        for col in ("start", "open", "high", "low", "close"):
            assert np.array_equal(getattr(a, col), getattr(e, col)), (symbol, col)
        np.testing.assert_allclose(a.volume, e.volume, rtol=1e-2)


def test_resample_drops_partial_buckets() -> None:
    t = load_bundled("BTCUSDT", "1").slice(0, 12)
    r = resample(t, "5")
    assert all(s % interval_ms("5") == 0 for s in r.start)
    assert len(r) <= 2


def test_write_round_trip(tmp_path: Path) -> None:
    t = load_bundled("ETHUSDT", "5").slice(0, 50)
    out = write_klines_csv(t, tmp_path / "x_5m.csv.gz")
    with gzip.open(out, "rt") as fh:
        assert fh.readline().strip() == "timestamp,open,high,low,close,volume,turnover"
    back = load_klines(out, symbol="ETHUSDT", interval="5")
    for col in ("start", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(back, col), getattr(t, col))


def test_table_from_klines_round_trip() -> None:
    t = load_bundled("SOLUSDT", "5").slice(0, 5)
    again = KlineTable.from_klines("SOLUSDT", "5", t.klines())
    assert np.array_equal(again.close, t.close)


def test_bad_interval() -> None:
    with pytest.raises(KlineError, match="unsupported interval"):
        interval_ms("5m")


def test_identical_repeated_row_read_once_conflicting_duplicate_refused(tmp_path: Path) -> None:
    header = "timestamp,open,high,low,close,volume\n"
    row = "1743699900000,10,12,9,11,5\n"
    p = _write(tmp_path / "k.csv", header + row + row + "1743700200000,11,11.5,10,10.5,0\n")
    assert load_klines(p, symbol="BTCUSDT", interval="5").start.tolist() == [
        1743699900000,
        1743700200000,
    ]
    q = _write(tmp_path / "q.csv", header + row + "1743699900000,10,12,9,11.5,5\n")
    with pytest.raises(KlineError, match="duplicate timestamp"):
        load_klines(q, symbol="BTCUSDT", interval="5")


def test_every_shared_file_is_bundled_and_loads() -> None:
    """data/ holds every file PROVENANCE.md lists, byte for byte (sha256 of the raw CSV)."""
    import hashlib
    import re

    bybit = Path(__file__).resolve().parents[3] / "data" / "bybit"
    listed = re.findall(
        r"^\| (bybit_linear_\S+\.csv\.gz) \|.*`([0-9a-f]{64})` \|$",
        (bybit / "PROVENANCE.md").read_text(),
        flags=re.M,
    )
    assert len(listed) == 18
    for name, sha in listed:
        raw = gzip.decompress((bybit / name).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == sha, name
        assert len(load_klines(bybit / name, drop_last_unconfirmed=True)) > 1000
