"""The artefacts the inference benchmark runs: the committed student, the Identity floor,
the torch student and teacher, their ONNX exports and an int8 quantisation.

Only this module and :mod:`bench.training_time` import torch/training; the service code
measured elsewhere stays torch-free.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service import features as fx

ROOT = Path(__file__).resolve().parent.parent
STUDENT = ROOT / "models" / "student_pooled_5m.onnx"
INPUT = "features"


@dataclass
class Student:
    """The ONNX student to benchmark, its card (dict) and where it came from."""

    path: Path
    card: dict[str, Any]
    origin: str  # "committed" or a description of the stand-in


def real_windows(n: int, symbol: str = "BTCUSDT", interval: str = "5") -> npt.NDArray[np.float32]:
    """The last n model inputs (n, F, T) float32 from the bundled klines (real data)."""
    from service.market.kline_io import load_bundled

    t = load_bundled(symbol, interval)
    feats = fx.batch_features(t.open, t.high, t.low, t.close, t.volume)
    ends = fx.window_ends(feats)
    return fx.make_windows(feats, ends[-n:])


def identity_onnx(path: Path, n_features: int = fx.N_FEATURES, window: int = fx.WINDOW) -> Path:
    """An ONNX graph that returns its (batch, F, T) input: the cost of the API alone."""
    import onnx
    from onnx import TensorProto, helper

    shape: list[int | str] = ["batch", n_features, window]
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT], ["out"])], "floor", [inp], [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _spec(arch: dict[str, Any] | None, family: str, role: str) -> Any:
    """A NetSpec from a model card's ``arch`` (any of its spellings), else the family default."""
    from training.nets.networks import NetSpec, default_spec

    base = default_spec(family, role, fx.N_FEATURES, fx.WINDOW)
    if not arch:
        return base
    arch = dict(arch.get("spec", arch))
    channels = arch.get("channels") or arch.get("hidden") or base.channels
    return NetSpec(
        family=str(arch.get("family", family)),
        n_features=int(arch.get("n_features", fx.N_FEATURES)),
        window=int(arch.get("window", fx.WINDOW)),
        channels=tuple(int(c) for c in channels),
        kernel_size=int(arch.get("kernel_size", base.kernel_size)),
        dilations=tuple(int(d) for d in arch.get("dilations", ())),
        dropout=float(arch.get("dropout", base.dropout)),
    )


def load_student(tmp: Path) -> Student:
    """The student to benchmark: ``$APPRENTICE_MODEL`` when set (the variable the service
    reads: any exported student, whatever its outputs), else the committed one, else (until
    it lands) the default tcn student exported to ``tmp``."""
    chosen = os.environ.get("APPRENTICE_MODEL")
    path = Path(chosen) if chosen else STUDENT
    if path.exists():
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        return Student(path, card, "committed" if path == STUDENT else f"$APPRENTICE_MODEL {path}")
    import torch

    from training.export import export_onnx
    from training.nets.networks import build_network

    torch.manual_seed(0)
    spec = _spec(None, "tcn", "student")
    net = build_network(spec).eval()
    path = export_onnx(net, tmp / "standin_student.onnx", fx.N_FEATURES, fx.WINDOW)
    card = _standin_card(path, spec)
    return Student(path, card, "STAND-IN (models/student_pooled_5m.onnx not committed yet)")


def _standin_card(path: Path, spec: Any) -> dict[str, Any]:
    """A valid model card beside the stand-in, so the real service will load it."""
    from service.model.card import NetworkSpec
    from training.export import build_card

    t_spec = _spec(None, spec.family, "teacher")
    card = build_card(
        name="standin_student",
        onnx_path=path,
        symbols=["BTCUSDT"],
        interval="5",
        window=fx.WINDOW,
        teacher=NetworkSpec(family=t_spec.family, arch=t_spec.to_dict(), params=0),
        student=NetworkSpec(family=spec.family, arch=spec.to_dict(), params=0),
        distillation={},
        metrics={},
        data_span={},
    )
    card.save(path.with_suffix(".json"))
    return card.model_dump()


def torch_student(student: Student) -> tuple[Any, str]:
    """The student in torch eager with the ONNX file's weights where the names match.

    The exporter folds BatchNorm into the convolutions, so the folded conv weights are loaded
    and every BatchNorm set to identity: the torch module then computes the same function.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from training.nets.networks import build_network

    s = student.card.get("student", {})
    net = build_network(_spec(s.get("arch"), s.get("family", "tcn"), "student")).eval()
    inits = {
        i.name.removeprefix("net."): numpy_helper.to_array(i)
        for i in onnx.load(str(student.path)).graph.initializer
    }
    state = net.state_dict()
    loaded = 0
    with torch.no_grad():
        for name, tensor in state.items():
            if name in inits and tuple(inits[name].shape) == tuple(tensor.shape):
                tensor.copy_(torch.from_numpy(np.array(inits[name])))
                loaded += 1
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)
                mod.weight.fill_(1.0)
                mod.bias.fill_(0.0)
    skip = ("running_mean", "running_var", "batches_tracked")
    params = [n for n in state if not n.endswith(skip)]
    params = [n for n in params if ".bn" not in n]
    how = f"weights from the ONNX initialisers ({loaded}/{len(params)} tensors)"
    return net, how


def torch_teacher(student: Student) -> tuple[Any, str]:
    """The teacher in torch eager: a trained checkpoint under runs/ if one exists, else the
    card's teacher architecture with seeded random weights (latency does not depend on them)."""
    import torch

    from training.nets.networks import build_network

    t = student.card.get("teacher", {})
    family = t.get("family", "tcn")
    arch = t.get("arch")
    if family == "ensemble":  # one member stands for the ensemble (the card lists them all)
        arch = (arch or {}).get("members", [{}])[0]
        family = arch.get("family", "tcn")
    elif family not in ("tcn", "mlp"):  # no teacher (a scratch student): the family default
        family, arch = student.card.get("student", {}).get("family", "tcn"), None
    for ckpt in sorted((ROOT / "runs").glob(f"{family}-teacher*/checkpoint.pt")):
        try:
            from training.distill.train import model_from_checkpoint

            return model_from_checkpoint(ckpt), f"trained checkpoint {ckpt.relative_to(ROOT)}"
        except (OSError, ValueError, KeyError, RuntimeError):
            continue
    torch.manual_seed(0)
    net = build_network(_spec(arch, family, "teacher")).eval()
    return net, "card architecture, random weights (no teacher checkpoint under runs/)"


def mlp_student(tmp: Path) -> Path:
    """The seed's mlp-family student ([32, 16], random weights) exported like the real one:
    a reference for how much of the student's latency is its architecture."""
    import torch

    from training.export import export_onnx
    from training.nets.networks import build_network

    torch.manual_seed(0)
    net = build_network(_spec(None, "mlp", "student")).eval()
    return export_onnx(net, tmp / "mlp_student.onnx", fx.N_FEATURES, fx.WINDOW)


def export_teacher(net: Any, path: Path) -> Path:
    """The teacher through the same exporter as the student (training.export)."""
    from training.export import export_onnx

    return export_onnx(net, path, fx.N_FEATURES, fx.WINDOW)


def quantize_int8(src: Path, dst: Path) -> Path:
    """onnxruntime dynamic int8 quantisation (weights int8, activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def onnx_params(path: Path) -> int:
    """Elements in an ONNX file's initialisers (weights, and constants such as the
    normalisation's): the model's size whatever framework made it."""
    import onnx

    model = onnx.load(str(path))
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def param_count(net: Any) -> int:
    """Trainable parameters of a torch module."""
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def service_predictor(student: Student) -> Any:
    """helper-4's Predictor on the student (a minimal card for a stand-in model)."""
    import onnxruntime as ort

    from service.model.card import ModelCard, NetworkSpec, TensorSpec, sha256_file
    from service.model.predictor import Predictor, session_options

    if not student.origin.startswith("STAND-IN"):  # the service's own load and checks
        return Predictor.load(student.path)
    card = ModelCard(
        name="standin",
        version="0",
        created_at="",
        symbols=["BTCUSDT"],
        interval="5",
        window=fx.WINDOW,
        feature_names=list(fx.FEATURE_NAMES),
        feature_spec_hash=fx.FEATURE_SPEC_HASH,
        inputs=[TensorSpec(name="features", shape=["batch", fx.N_FEATURES, fx.WINDOW])],
        outputs=[TensorSpec(name="prob_up", shape=["batch"])],
        opset=18,
        sha256=sha256_file(student.path),
        onnx_file=student.path.name,
        teacher=NetworkSpec(family="tcn", params=0),
        student=NetworkSpec(family="tcn", params=0),
    )
    sess = ort.InferenceSession(
        str(student.path), session_options(), providers=["CPUExecutionProvider"]
    )
    return Predictor(student.path, card, sess)
