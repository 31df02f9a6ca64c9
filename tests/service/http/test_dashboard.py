"""The dashboard in headless Chromium: a non-blank screenshot and a DOM that shows the data."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.http.app import create_app, runtime_of
from service.market.klines import KlineEvent, KlineTable

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB/RGBA PNG (stdlib zlib only)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


SCREENSHOT_COPY = os.environ.get("APPRENTICE_SCREENSHOT_COPY")  # keep the PNG for a look


@pytest.fixture
def live_server(
    tmp_path: Path,
    make_settings: Callable[..., Any],
    model_writer: Callable[..., Any],
    btc_5m: KlineTable,
    make_events: Callable[..., Any],
) -> Iterator[str]:
    """The app on a real loopback port with signals, paper trades and live scores made."""
    card = {
        "metrics": {
            "direction": {"accuracy": 0.51, "log_loss": 0.6925, "brier": 0.2497, "auc": 0.52},
            "volatility": {"accuracy": 0.64, "log_loss": 0.631, "brier": 0.221, "auc": 0.69},
        },
    }
    fm = model_writer(tmp_path / "dash_model", card_extra=card)
    settings = make_settings(symbols=["BTCUSDT", "ETHUSDT"], model=fm.onnx_path)

    class Feed:
        connected = True

        def __init__(self, queue: Any) -> None:
            self.queue = queue

        async def run(self) -> None:
            for lo, hi, source in ((0, 120, "rest"), (120, 180, "ws")):
                for i in range(lo, hi):  # candle by candle, symbols interleaved as live
                    for sym in settings.symbols:
                        ev: KlineEvent = make_events(btc_5m, i, i + 1, source=source, symbol=sym)[0]
                        await self.queue.put(ev)
            import asyncio

            await asyncio.Event().wait()

    app = create_app(settings, feed_factory=lambda s, q, m: Feed(q))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    rt = runtime_of(app)
    while time.monotonic() < deadline:
        scored = rt.monitor.scorer.scored_total("ETHUSDT", "volatility")
        if rt.trader and rt.trader.account.trades > 0 and scored >= 59:
            break
        time.sleep(0.05)
    assert httpx.get(f"{base}/paper").json()["trades"] > 0
    yield base
    server.should_exit = True
    thread.join(15)


def _chromium(tmp_path: Path, *extra: str, url: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
        "--virtual-time-budget=5000",
        *extra,
        url,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, cwd=tmp_path)


def test_dashboard_shows_signals_paper_and_latency(live_server: str, tmp_path: Path) -> None:
    page = httpx.get(f"{live_server}/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    assert httpx.get(f"{live_server}/static/app.js").status_code == 200

    dom = _chromium(tmp_path, "--dump-dom", url=f"{live_server}/").stdout
    assert 'data-symbol="BTCUSDT"' in dom and 'data-symbol="ETHUSDT"' in dom
    assert "warming" not in dom  # both symbols have signals
    assert "%</div>" in dom  # the probability is rendered
    assert "<td>buy</td>" in dom or "<td>sell</td>" in dom  # trades table filled
    assert "frame → signal" in dom and "µs" in dom  # latency table from /metrics
    assert "student_fixture" in dom  # the model line
    # both heads on the cards, the price chart with the served actions, model health
    assert "volatility: P(high)" in dom and 'data-regime="' in dom
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert f'data-chart="{sym}" data-points="102"' in dom  # 180 candles - 78 warming
        assert f'data-head="{sym}-volatility"' in dom and f'data-head="{sym}-direction"' in dom
    assert "<polyline" in dom and "<polygon" in dom  # closes and P(high vol)
    assert 'class="act-long"' in dom or 'class="act-short"' in dom  # action changes marked
    # issue 28: the header states the N the table has (59 scored of a 288 window), not 288
    assert "last N = 59 scored candles (at most 288)" in dom
    assert "last N = 288 scored candles per" not in dom
    # the period and the policy in force, from the card, on top of the page
    assert 'id="period" data-sample="' in dom and "candles 20" in dom
    assert "Paper trading policy direction" in dom
    # a card is coloured by its action, not by P(up) < 0.5
    for action in ("long", "short", "flat"):
        if f'data-action="{action}"' in dom:
            assert f'class="card {action}" data-symbol=' in dom
    assert 'class="card up"' not in dom and 'class="card down"' not in dom
    # labels say what they count; round trips and per-symbol PnL after fees
    assert "fills</span>" in dom and "round trips</span>" in dom
    assert "realised (before fees)" in dom and "net PnL (after fees)" in dom
    assert 'id="trips"' in dom and "buy and hold" in dom
    # the price charts have a time axis
    assert dom.count(" UTC</text>") >= 2
    assert "moved past PSI" in dom or "No feature has moved" in dom  # drift explains itself
    assert "<td>rsi_14</td>" in dom and "live vectors" in dom  # drift table

    png = tmp_path / "dashboard.png"
    _chromium(tmp_path, f"--screenshot={png}", url=f"{live_server}/")
    if SCREENSHOT_COPY:
        shutil.copy(png, SCREENSHOT_COPY)
    width, height, rows = decode_png(png.read_bytes())
    assert (width, height) == (1200, 900)
    pixels = [row[i : i + 3] for row in rows[::4] for i in range(0, len(row), 4 * 3)]
    colours: dict[bytes, int] = {}
    for px in pixels:
        colours[px] = colours.get(px, 0) + 1
    assert len(colours) > 40, "the page looks blank"
    assert max(colours.values()) / len(pixels) < 0.95, "one colour fills the page"
