"""``python -m training fetch`` (training/data/fetch.py) against the replay exchange's REST."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from service.market.kline_io import load_klines
from service.replay import ReplayConfig, ReplayExchange
from training.data.fetch import default_path, main

STEP = 300_000


async def test_fetch_writes_the_exchange_history_as_csv(tmp_path: Path) -> None:
    async with ReplayExchange(
        ReplayConfig(symbols=("ETHUSDT",), speed=60.0, history_bars=1500)
    ) as ex:
        end = ex.start_ms - STEP  # a closed candle in replay time
        out = tmp_path / "eth.csv.gz"
        argv = ["--symbol", "ETHUSDT", "--interval", "5", "--days", "4", "--end", str(end)]
        argv += ["--rest-url", ex.rest_url, "--out", str(out)]
        assert await asyncio.to_thread(main, argv) == 0
        table = load_klines(out, symbol="ETHUSDT", interval="5")
        assert len(table) == 4 * 288 + 1  # inclusive bounds, two 1000-bar windows
        assert int(table.start[-1]) == end
        tape = ex.tapes["ETHUSDT"]
        for i in (0, 500, len(table) - 1):
            want = tape.closed(int(table.start[i]))
            assert want is not None
            assert (table.open[i], table.high[i], table.low[i], table.close[i]) == (
                want.open,
                want.high,
                want.low,
                want.close,
            )
            assert table.volume[i] == want.volume


async def test_fetch_refuses_a_bad_symbol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ReplayExchange(ReplayConfig(symbols=("ETHUSDT",), speed=60.0)) as ex:
        argv = ["--symbol", "NOPEUSDT", "--rest-url", ex.rest_url, "--out", str(tmp_path / "x.csv")]
        assert await asyncio.to_thread(main, argv) == 2
    assert "Not supported symbols" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_default_path_follows_the_bundle_naming() -> None:
    p = default_path("BTCUSDT", "5", 1743699900000, 1746291600000)
    assert p.name == "bybit_linear_BTCUSDT_5m_20250403-20250503.csv.gz"
