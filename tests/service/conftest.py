"""Fixtures for the service tests: a tiny ONNX student built without torch, klines, settings.

The fixture model mirrors the exported student's contract (input "features" (batch, F, T)
float32; outputs "prob_up" (batch,), "prob_high_vol" (batch,) and "logits" (batch, 2)) with a
linear layer per head, so tests exercise real onnxruntime without training anything.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.features import (
    FEATURE_NAMES,
    FEATURE_SPEC_HASH,
    N_FEATURES,
    WINDOW,
    batch_features,
)
from service.market.kline_io import load_bundled
from service.market.klines import KlineEvent, KlineTable
from service.model.card import FeatureReference, ModelCard, NetworkSpec, TensorSpec, sha256_file
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FixtureModel:
    """Paths of a written fixture model and its weights (for hand-checking outputs)."""

    onnx_path: Path
    card_path: Path
    weight: np.ndarray  # (F*T,) float32
    bias: float
    weight_vol: np.ndarray | None = None  # (F*T,) float32: the volatility head's weights


def build_linear_onnx(
    weight: np.ndarray,
    bias: float,
    *,
    output_shape: str = "batch",
    with_logits: bool = True,
    weight_vol: np.ndarray | None = None,
) -> onnx.ModelProto:
    """features (B, F, T) -> flatten -> Gemm -> z (B, 1); prob_up = sigmoid(z).

    ``output_shape`` "batch" gives prob_up (B,), "batch1" gives (B, 1); logits = [0, z] so
    softmax(logits)[:, 1] == sigmoid(z), like the real export. With ``weight_vol`` a second
    head prob_high_vol = sigmoid(flat @ weight_vol) of the same shape is added.
    """
    w = numpy_helper.from_array(weight.reshape(-1, 1).astype(np.float32), "W")
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "B")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    zero = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [
        helper.make_node("Flatten", ["features"], ["flat"], axis=1),  # (B, F*T)
        helper.make_node("Gemm", ["flat", "W", "B"], ["z"]),  # (B, 1)
        helper.make_node("Sigmoid", ["z"], ["p1"]),  # (B, 1)
    ]
    if output_shape == "batch":
        nodes.append(helper.make_node("Squeeze", ["p1", "axes"], ["prob_up"]))
        out_p = helper.make_tensor_value_info("prob_up", TensorProto.FLOAT, ["batch"])
    else:
        nodes.append(helper.make_node("Identity", ["p1"], ["prob_up"]))
        out_p = helper.make_tensor_value_info("prob_up", TensorProto.FLOAT, ["batch", 1])
    outputs = [out_p]
    inits = [w, b, axes, zero]
    if weight_vol is not None:
        inits.append(numpy_helper.from_array(weight_vol.reshape(-1, 1).astype(np.float32), "WV"))
        nodes += [
            helper.make_node("MatMul", ["flat", "WV"], ["zv"]),  # (B, 1)
            helper.make_node("Sigmoid", ["zv"], ["pv1"]),
        ]
        if output_shape == "batch":
            nodes.append(helper.make_node("Squeeze", ["pv1", "axes"], ["prob_high_vol"]))
        else:
            nodes.append(helper.make_node("Identity", ["pv1"], ["prob_high_vol"]))
        shape: list[str | int] = ["batch"] if output_shape == "batch" else ["batch", 1]
        outputs.append(helper.make_tensor_value_info("prob_high_vol", TensorProto.FLOAT, shape))
    if with_logits:
        nodes += [
            helper.make_node("Mul", ["z", "zero"], ["z0"]),
            helper.make_node("Concat", ["z0", "z"], ["logits"], axis=1),  # (B, 2)
        ]
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]))
    graph = helper.make_graph(
        nodes,
        "fixture_student",
        [
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, ["batch", N_FEATURES, WINDOW]
            )
        ],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def write_fixture_model(
    directory: Path,
    *,
    name: str = "student_fixture",
    version: str = "0.0.1",
    seed: int = 0,
    scale: float = 0.1,
    output_shape: str = "batch",
    spec_hash: str = FEATURE_SPEC_HASH,
    with_vol: bool = True,
    card_extra: dict[str, object] | None = None,
) -> FixtureModel:
    """Write ``<name>.onnx`` and its card into ``directory``; returns paths and weights.

    ``scale`` spreads the probabilities so that thresholds 0.45/0.55 are crossed on real data.
    """
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal(N_FEATURES * WINDOW) * scale).astype(np.float32)
    weight_vol = (
        (rng.standard_normal(N_FEATURES * WINDOW) * scale).astype(np.float32) if with_vol else None
    )
    bias = 0.0
    directory.mkdir(parents=True, exist_ok=True)
    onnx_path = directory / f"{name}.onnx"
    model = build_linear_onnx(weight, bias, output_shape=output_shape, weight_vol=weight_vol)
    onnx.save(model, str(onnx_path))
    shape_out: list[int | str] = ["batch"] if output_shape == "batch" else ["batch", 1]
    card = ModelCard(
        name=name,
        version=version,
        created_at="2026-01-01T00:00:00Z",
        symbols=["BTCUSDT"],
        interval="5",
        window=WINDOW,
        feature_names=list(FEATURE_NAMES),
        feature_spec_hash=spec_hash,
        inputs=[TensorSpec(name="features", shape=["batch", N_FEATURES, WINDOW])],
        outputs=[
            TensorSpec(name="prob_up", shape=shape_out),
            *([TensorSpec(name="prob_high_vol", shape=shape_out)] if with_vol else []),
            TensorSpec(name="logits", shape=["batch", 2]),
        ],
        opset=18,
        sha256=sha256_file(onnx_path),
        onnx_file=onnx_path.name,
        teacher=NetworkSpec(family="tcn", params=1000),
        student=NetworkSpec(family="linear", params=N_FEATURES * WINDOW + 1),
        # the fixture trades the seed's direction rule, as the paper tests expect (a card
        # without a policy would default to flat: DESIGN section 8)
        **{
            "feature_reference": feature_reference(),
            "policy": {"default": "direction", "params": {}},
            **(card_extra or {}),
        },
    )
    card_path = card.save(onnx_path.with_suffix(".json"))
    return FixtureModel(onnx_path, card_path, weight, bias, weight_vol)


@functools.cache
def feature_reference() -> FeatureReference:
    """Deciles of the first 5000 bundled BTCUSDT 5m feature rows (what training writes into
    the card for drift); computed once per process."""
    t = load_bundled("BTCUSDT", "5").slice(0, 5000)
    feats = batch_features(t.open, t.high, t.low, t.close, t.volume)
    rows = feats[~np.isnan(feats).any(axis=1)]
    levels = [i / 10 for i in range(11)]
    return FeatureReference(
        quantiles=levels,
        values={n: list(np.quantile(rows[:, j], levels)) for j, n in enumerate(FEATURE_NAMES)},
        rows=int(rows.shape[0]),
    )


@pytest.fixture
def fixture_model(tmp_path: Path) -> FixtureModel:
    """A valid fixture student in a temporary directory."""
    return write_fixture_model(tmp_path / "models")


@pytest.fixture(scope="session")
def btc_5m() -> KlineTable:
    """The bundled BTCUSDT 5m klines (read once per session)."""
    return load_bundled("BTCUSDT", "5")


@pytest.fixture
def make_settings(tmp_path: Path, fixture_model: FixtureModel) -> Iterator[object]:
    """Factory: Settings for tests (fixture model, temp state dir, loopback URLs)."""

    def _make(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "symbols": ["BTCUSDT"],
            "interval": "5",
            "model": fixture_model.onnx_path,
            "state_dir": tmp_path / "state",
            "ws_url": "ws://127.0.0.1:9/v5/public/linear",
            "rest_url": "http://127.0.0.1:9",
            "port": 0,
            # route tests script ~100 bars; the 300-bar horizon has its own tests
            "signal_horizon_bars": 79,
        }
        base.update(overrides)
        return load_settings(**base)

    yield _make


def events_from(
    table: KlineTable, lo: int, hi: int, *, source: str = "ws", symbol: str | None = None
) -> list[KlineEvent]:
    """Rows ``lo:hi`` of a table as closed-kline events stamped with the local clock now."""
    out = []
    for i in range(lo, hi):
        k = table.row(i)
        if symbol is not None:
            k = replace(k, symbol=symbol)
        out.append(
            KlineEvent(k, exchange_ts=k.end + 1, received_ns=time.perf_counter_ns(), source=source)
        )
    return out


class ScriptedFeed:
    """A feed double: pushes a REST-style backfill on start, then idles until cancelled.

    Tests push live events with :meth:`push` (from the app's loop, e.g. via
    ``client.portal``); the feed runs on the service's candle thread, so the events are
    queued there, on the loop that runs :meth:`run`.
    """

    def __init__(
        self,
        queue: asyncio.Queue[KlineEvent],
        backfill: list[KlineEvent],
        *,
        connected: bool = True,
    ) -> None:
        self.queue = queue
        self.backfill = backfill
        self.connected = connected
        self.cancelled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            for ev in self.backfill:
                await self.queue.put(ev)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def push(self, events: list[KlineEvent]) -> None:
        """Queue live events and wait until the pipeline has taken them all."""
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            done = asyncio.run_coroutine_threadsafe(self.push(events), self.loop)
            await asyncio.wrap_future(done)
            return
        for ev in events:
            await self.queue.put(ev)
        while not self.queue.empty():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)


def scripted_feed_factory(
    backfill: dict[str, KlineTable], n_backfill: int, *, connected: bool = True
) -> tuple[Callable[..., ScriptedFeed], list[ScriptedFeed]]:
    """A feed_factory for create_app plus the list the built feeds are appended to."""
    built: list[ScriptedFeed] = []

    def factory(
        settings: Settings, queue: asyncio.Queue[KlineEvent], metrics: object
    ) -> ScriptedFeed:
        events: list[KlineEvent] = []
        for sym in settings.symbols:
            events += events_from(backfill[sym], 0, n_backfill, source="rest", symbol=sym)
        feed = ScriptedFeed(queue, events, connected=connected)
        built.append(feed)
        return feed

    return factory, built


@pytest.fixture
def model_writer() -> Callable[..., FixtureModel]:
    """:func:`write_fixture_model` (tests cannot import conftest under importlib mode)."""
    return write_fixture_model


@pytest.fixture
def onnx_builder() -> Callable[..., onnx.ModelProto]:
    """:func:`build_linear_onnx`."""
    return build_linear_onnx


@pytest.fixture
def feed_factory_maker() -> Callable[..., tuple[Callable[..., ScriptedFeed], list[ScriptedFeed]]]:
    """:func:`scripted_feed_factory`."""
    return scripted_feed_factory


@pytest.fixture
def make_events() -> Callable[..., list[KlineEvent]]:
    """:func:`events_from`."""
    return events_from


@dataclass
class ServiceProcess:
    """`python -m service` as a real child process against a replay exchange, for the
    kill -9 / restart tests: the same settings on every (re)start."""

    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL
        )

    def kill9(self) -> None:
        """SIGKILL mid-run (candles keep closing meanwhile)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM: uvicorn shuts down gracefully, then re-raises SIGTERM as its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) in (0, -signal.SIGTERM)

    def reap(self) -> None:
        """Kill it if a failed assertion left it running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def service_process(fixture_model: FixtureModel) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: a `ServiceProcess` on a free port, reading `ws_url`/`rest_url` (a replay
    exchange), trading `symbols` and journaling into `state`; reaped at the end."""
    made: list[ServiceProcess] = []

    def make(ws_url: str, rest_url: str, symbols: Sequence[str], state: Path) -> ServiceProcess:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("APPRENTICE_")}
        env.update(
            APPRENTICE_SYMBOLS=",".join(symbols),
            APPRENTICE_WS_URL=ws_url,
            APPRENTICE_REST_URL=rest_url,
            APPRENTICE_MODEL=str(fixture_model.onnx_path),
            APPRENTICE_STATE_DIR=str(state),
            APPRENTICE_PORT=str(port),
            APPRENTICE_LOG_LEVEL="warning",
        )
        made.append(ServiceProcess(env, port))
        return made[-1]

    yield make
    for p in made:
        p.reap()


async def until_true(
    check: Callable[[], Awaitable[Any]], timeout_s: float, what: str, poll_s: float = 0.1
) -> Any:
    """Poll `check` every `poll_s` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def until() -> Callable[..., Awaitable[Any]]:
    """:func:`until_true` (tests cannot import conftest under importlib mode)."""
    return until_true
