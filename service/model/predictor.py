"""The ONNX student behind the signals: load, verify against its card, score windows.

Two ways in, same graph, same numbers. :meth:`Predictor.score` runs a burst's windows
(B, F, T) in one call: the live path collects the candles that close together
(:mod:`service.pipeline.scoring`) and scores them at once — at B = 500 one call costs
about a tenth of 500 single-row calls (measured: ~1 ms against ~14 ms), with bit-identical
probabilities (a test holds every row equal to its single-row call). :meth:`Predictor.predict`
scores one window with a preallocated (1, F, T) float32 input bound once with I/O binding
together with a preallocated output, so a prediction is a copy into the input buffer plus
one ``run`` (the self-test, tools). One intra-op and one inter-op thread, sequential
execution, full graph optimisation: no thread pool to wake on a 2-core host.

Every close runs the plain full graph: no graph surgery, so any exported student with the
card's input and outputs is served the same way.

Both heads are served: the graph must have the outputs DESIGN section 5 names
(``HEAD_OUTPUTS``: ``prob_up`` for direction, ``prob_high_vol`` for volatility), each (batch,)
or (batch, 1); both are bound and computed by the same ``run``. A model is served only after
:func:`service.model.card.verify_model` agrees (sha256 and feature-spec hash), its graph
matches the card (input name and shape, both outputs) and a trial prediction gives two
probabilities. :class:`ModelSlot` holds the serving predictor; a reload
builds and validates a new one off the event loop and swaps the reference in one assignment.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.features import FEATURE_NAMES, FEATURE_SPEC_HASH, N_FEATURES, WINDOW
from service.model.card import HEAD_OUTPUTS, HEADS, ModelCard, ModelCardError, verify_model

OUTPUT_NAME = HEAD_OUTPUTS["direction"]  # "prob_up"
VOL_OUTPUT_NAME = HEAD_OUTPUTS["volatility"]  # "prob_high_vol"
F64 = npt.NDArray[np.float64]


def session_options() -> ort.SessionOptions:
    """Single-row latency settings: no thread pools to wake, every graph optimisation."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = True
    opts.log_severity_level = 3  # warnings from the optimiser are not the user's concern
    return opts


def _check_card(card: ModelCard, source: Path) -> None:
    """The card must describe the features and window this service computes."""
    if list(card.feature_names) != list(FEATURE_NAMES):
        raise ModelCardError(
            f"{source}: card feature_names {card.feature_names} differ from the service's "
            f"{list(FEATURE_NAMES)}; retrain/export with the current features"
        )
    if card.window != WINDOW:
        raise ModelCardError(f"{source}: card window {card.window} != service window {WINDOW}")


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a signal records about the model that produced it."""

    name: str
    version: str


class Predictor:
    """One verified ONNX session scoring (F, T) windows; not thread-safe (one caller)."""

    def __init__(
        self,
        onnx_path: Path,
        card: ModelCard,
        session: ort.InferenceSession,
    ) -> None:
        self.path = onnx_path
        self.card = card
        self.identity = ModelIdentity(card.name, card.version)
        self.loaded_at = time.time()
        self._session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelCardError(f"{onnx_path}: expected one input, the graph has {len(inputs)}")
        self.input_name = inputs[0].name
        declared = card.inputs[0].name if card.inputs else self.input_name
        if declared != self.input_name:
            raise ModelCardError(
                f"{onnx_path}: graph input {self.input_name!r} differs from the card's {declared!r}"
            )
        shape = inputs[0].shape  # e.g. ['batch', 12, 32]
        if len(shape) != 3 or list(shape[1:]) != [N_FEATURES, WINDOW]:
            raise ModelCardError(
                f"{onnx_path}: input shape {shape} is not (batch, {N_FEATURES}, {WINDOW})"
            )
        outputs = {o.name: o for o in session.get_outputs()}
        missing = [HEAD_OUTPUTS[h] for h in HEADS if HEAD_OUTPUTS[h] not in outputs]
        if missing:
            raise ModelCardError(
                f"{onnx_path}: no {' or '.join(repr(m) for m in missing)} output "
                f"(outputs: {sorted(outputs)}); the service serves both heads "
                f"({', '.join(f'{h}: {HEAD_OUTPUTS[h]}' for h in HEADS)}): "
                "export a two-head student with training.export"
            )
        buffers = {}
        for name in HEAD_OUTPUTS.values():
            out_shape = outputs[name].shape
            if len(out_shape) not in (1, 2) or (len(out_shape) == 2 and out_shape[1] != 1):
                raise ModelCardError(
                    f"{onnx_path}: {name} shape {out_shape} is not (batch,) or (batch, 1)"
                )
            buffers[name] = np.zeros((1,) if len(out_shape) == 1 else (1, 1), dtype=np.float32)
        # Preallocated buffers, bound once: predict() copies into _x and reads both outputs.
        self._x = np.zeros((1, N_FEATURES, WINDOW), dtype=np.float32)  # (1, F, T)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(
            self.input_name, ort.OrtValue.ortvalue_from_numpy(self._x)
        )
        for name, buf in buffers.items():
            self._binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        self._y_flat = buffers[OUTPUT_NAME].reshape(-1)  # (1,) views of the bound outputs
        self._v_flat = buffers[VOL_OUTPUT_NAME].reshape(-1)
        self._x0 = self._x[0]  # (F, T) view: the copy target
        self._head_names = [OUTPUT_NAME, VOL_OUTPUT_NAME]

    @classmethod
    def load(cls, onnx_path: str | Path, card_path: str | Path | None = None) -> Predictor:
        """Verify ``onnx_path`` against its card and build a ready session.

        Raises :class:`ModelCardError` (with what to fix) for a missing or mismatching model.
        """
        path = Path(onnx_path)
        if not path.is_file():
            raise ModelCardError(f"model {path} not found; set APPRENTICE_MODEL to an .onnx file")
        cpath = Path(card_path) if card_path is not None else path.with_suffix(".json")
        card = ModelCard.load(cpath)
        _check_card(card, cpath)
        verify_model(path, card, FEATURE_SPEC_HASH)
        try:
            session = ort.InferenceSession(
                str(path), sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelCardError(f"{path}: onnxruntime cannot load it: {exc}") from None
        pred = cls(path, card, session)
        pred.self_test()
        return pred

    def self_test(self) -> None:
        """A trial prediction on a neutral window must give two finite probabilities."""
        p = self.predict(np.zeros((N_FEATURES, WINDOW), dtype=np.float64))
        for name, value in ((OUTPUT_NAME, p), (VOL_OUTPUT_NAME, self.high_vol)):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ModelCardError(
                    f"{self.path}: trial prediction {name}={value} is not a probability"
                )

    def predict(self, window: F64) -> float:
        """Probability of an up candle for one (F, T) window (oldest → newest columns)."""
        np.copyto(self._x0, window, casting="unsafe")  # float64 -> float32, no allocation
        # run_options=None on purpose: with a RunOptions object onnxruntime's Python wrapper
        # probes a config key by raising a C++ exception, ~30 µs per call (measured, 1.32).
        self._session.run_with_iobinding(self._binding)
        return float(self._y_flat[0])

    @property
    def high_vol(self) -> float:
        """The volatility head's probability from the last :meth:`predict` (same run)."""
        return float(self._v_flat[0])

    def score(
        self, windows: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Both heads for a batch of windows (B, F, T) float32, oldest → newest columns, in
        one ``run``: (prob_up (B,), prob_high_vol (B,)). Row i equals :meth:`predict` of
        window i bit for bit (the graph has no cross-row op; a test holds it)."""
        outs = self._session.run(self._head_names, {self.input_name: windows})
        return outs[0].reshape(-1), outs[1].reshape(-1)

    def predict_batch(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities for a batch (B, F, T) through the plain ``run`` path (tests, tools)."""
        out = self._session.run([OUTPUT_NAME], {self.input_name: windows})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def predict_heads(self, windows: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """Both heads for a batch (B, F, T): {"direction": (B,), "volatility": (B,)}."""
        names = [HEAD_OUTPUTS[h] for h in HEADS]
        outs = self._session.run(names, {self.input_name: windows})
        return {
            h: np.asarray(o, dtype=np.float32).reshape(-1) for h, o in zip(HEADS, outs, strict=True)
        }


class ModelSlot:
    """The serving predictor; replaced by one reference assignment (atomic for readers)."""

    __slots__ = ("current", "reloads")

    def __init__(self, predictor: Predictor | None = None) -> None:
        self.current = predictor
        self.reloads = 0

    def swap(self, predictor: Predictor) -> Predictor | None:
        """Serve ``predictor`` from now on; returns the one it replaced."""
        old, self.current = self.current, predictor
        self.reloads += 1
        return old
