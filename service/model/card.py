"""The model card (DESIGN section 5): written by training's export, checked by the service.

Shared schema so both sides agree on field names; pure (pydantic + hashlib), no torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelCardError(ValueError):
    """A model or card that must not be served; the message says what disagrees."""


class TensorSpec(BaseModel):
    """Name, dtype and shape of one graph input or output ("batch" marks the dynamic axis)."""

    name: str
    dtype: str = "float32"
    shape: list[int | str]


class NetworkSpec(BaseModel):
    """A network's family, its architecture settings and parameter count."""

    family: str
    arch: dict[str, Any] = Field(default_factory=dict)
    params: int


HEADS = ("direction", "volatility")  # one output per head, in this order
HEAD_OUTPUTS = {"direction": "prob_up", "volatility": "prob_high_vol"}  # DESIGN section 5


class FeatureReference(BaseModel):
    """Per-feature quantiles of the training rows: the reference live drift (PSI) is read against.

    ``values[name][k]`` is the ``quantiles[k]`` quantile of feature ``name`` over ``rows``
    training rows; ``quantiles`` runs from 0 to 1 (the decile edges by default).
    """

    quantiles: list[float]
    values: dict[str, list[float]]
    rows: int


class ModelCard(BaseModel):
    """Everything the service needs to trust and describe an exported student.

    ``metrics`` holds the test-split figures per head: ``metrics["direction"]`` and
    ``metrics["volatility"]`` each map accuracy, log_loss, brier, auc, agreement_with_teacher
    (and more) to numbers; ``metrics["teacher_test"]`` has the same per-head layout.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    version: str
    created_at: str
    symbols: list[str]
    interval: str
    window: int
    feature_names: list[str]
    feature_spec_hash: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    sha256: str
    onnx_file: str
    teacher: NetworkSpec
    student: NetworkSpec
    distillation: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_span: dict[str, Any] = Field(default_factory=dict)
    feature_reference: FeatureReference | None = None
    git_commit: str = "unknown"
    # The trading policy training chose on validation bars (DESIGN section 8), optional for
    # older cards: {"default": name, "params": {...}, "rule": text, "validation": {...}}.
    policy: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a card; a missing or malformed card is a :class:`ModelCardError`."""
        p = Path(path)
        try:
            return cls.model_validate_json(p.read_bytes())
        except FileNotFoundError:
            raise ModelCardError(f"model card {p} not found (expected beside the .onnx)") from None
        except ValueError as exc:
            raise ModelCardError(f"model card {p} is invalid: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the card as indented JSON."""
        p = Path(path)
        p.write_text(self.model_dump_json(indent=2) + "\n")
        return p


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_model(onnx_path: str | Path, card: ModelCard, feature_spec_hash: str) -> None:
    """Refuse a model whose bytes or feature spec disagree with its card.

    Integrity, not authenticity: the card's sha256 catches a corrupted, swapped or
    half-copied ONNX file, but the card is not signed, so whoever can write the model
    directory can write a matching card (re-hash a changed file) and it loads. The models
    directory is trusted; ``/admin/reload`` only loads plain file names from it.
    """
    digest = sha256_file(onnx_path)
    if digest != card.sha256:
        raise ModelCardError(
            f"{onnx_path}: sha256 {digest[:12]}… does not match its card ({card.sha256[:12]}…); "
            "re-export the model or restore the matching card"
        )
    if card.feature_spec_hash != feature_spec_hash:
        raise ModelCardError(
            f"{onnx_path}: feature-spec hash {card.feature_spec_hash[:12]}… differs from this "
            f"service's features ({feature_spec_hash[:12]}…); "
            "retrain/export with the current features"
        )


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def sample_period(
    card: ModelCard, symbols: Sequence[str], first_ms: int | None, last_ms: int | None
) -> dict[str, Any]:
    """Is a period of candles in or out of the card's sample, computed from its ``data_span``.

    In sample when it overlaps the training or validation span on one of the card's symbols
    (a symbol the model never trained on is out of sample whatever the dates). A card without
    a data span is never called out of sample. Returns ``{first_ms, last_ms, in_sample,
    overlaps, statement}``; the statement is one sentence for the terminal, /model/health and
    the page."""
    span = card.data_span or {}
    spans = {
        "training": (span.get("train_first_ms"), span.get("train_last_ms")),
        "validation": (span.get("val_first_ms"), span.get("val_last_ms")),
    }
    if first_ms is None or last_ms is None:
        return {
            "first_ms": None,
            "last_ms": None,
            "in_sample": None,
            "overlaps": [],
            "statement": "no live candle yet",
        }
    known = all(a is not None and b is not None for a, b in spans.values())
    ours = set(symbols) & set(card.symbols)
    overlaps = [
        name
        for name, (a, b) in spans.items()
        if a is not None and b is not None and ours and first_ms <= int(b) and last_ms >= int(a)
    ]
    period = f"candles {_day(first_ms)} → {_day(last_ms)} UTC"
    if not known:
        in_sample, text = True, f"{period}; the model card has no data span: sample unknown"
    elif overlaps:
        in_sample = True
        text = (
            f"IN SAMPLE: {period} overlap the model's {' and '.join(overlaps)} span "
            f"({_day(int(span['train_first_ms']))} → {_day(int(span['val_last_ms']))}): "
            "its scores and paper PnL here flatter it"
        )
    else:
        in_sample = False
        why = (
            f"after its validation span ended {_day(int(span['val_last_ms']))}"
            if ours
            else "symbols it never trained on"
        )
        text = f"Out of sample: {period}, {why}"
    return {
        "first_ms": first_ms,
        "last_ms": last_ms,
        "in_sample": in_sample,
        "overlaps": overlaps,
        "statement": text,
    }
