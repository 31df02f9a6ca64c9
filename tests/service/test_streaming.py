"""Streaming student: step + prepared partials equal the full graph; anything else is refused.

TCN graphs are built here with onnx.helper in the exported student's exact shape
(normalise → residual blocks of left-padded dilated convs → last/mean head → softmax), so
the planner and the step are checked on architectures the committed student does not have:
three blocks, kernels 2 and 4, identity skips, a receptive field wider than the window.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.features import N_FEATURES, WINDOW, batch_features, make_windows, window_ends
from service.klines import KlineTable
from service.predictor import Predictor, session_options
from service.streaming import StreamingStudent, StreamUnsupported, plan_stream, step_model

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "models" / "student_pooled_5m.onnx"


def tcn_onnx(
    channels: list[int],
    dilations: list[int],
    kernel: int = 3,
    *,
    seed: int = 0,
    pads: Callable[[int, int], list[int]] = lambda k, d: [(k - 1) * d, 0],
    head_index: int = -1,
    mean_first: bool = False,
) -> onnx.ModelProto:
    """A random TCN student graph laid out like training.export's (batch, F, T) → prob_up."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    f = N_FEATURES
    mean = const("mean", rng.normal(0, 0.01, (1, f, 1)).astype(np.float32))
    std = const("std", rng.uniform(0.005, 2.0, (1, f, 1)).astype(np.float32))
    nodes += [
        helper.make_node("Sub", ["features", mean], ["sub"]),
        helper.make_node("Div", ["sub", std], ["x0"]),
    ]

    def conv(name: str, src: str, co: int, ci: int, k: int, dil: int, pad: list[int]) -> str:
        w = rng.normal(0, 1.0 / np.sqrt(ci * k), (co, ci, k)).astype(np.float32)
        bias = rng.normal(0, 0.1, co).astype(np.float32)
        nodes.append(
            helper.make_node(
                "Conv",
                [src, const(f"{name}.w", w), const(f"{name}.b", bias)],
                [name],
                dilations=[dil],
                kernel_shape=[k],
                pads=pad,
                strides=[1],
                group=1,
            )
        )
        return name

    x, c_in = "x0", f
    for b, (c, d) in enumerate(zip(channels, dilations, strict=True)):
        h = conv(f"b{b}.c1", x, c, c_in, kernel, d, pads(kernel, d))
        nodes.append(helper.make_node("Relu", [h], [f"b{b}.h"]))
        h2 = conv(f"b{b}.c2", f"b{b}.h", c, c, kernel, d, pads(kernel, d))
        skip = x if c_in == c else conv(f"b{b}.skip", x, c, c_in, 1, 1, [0, 0])
        nodes.append(helper.make_node("Add", [h2, skip], [f"b{b}.sum"]))
        nodes.append(helper.make_node("Relu", [f"b{b}.sum"], [f"b{b}.out"]))
        x, c_in = f"b{b}.out", c
    idx = const("last", np.array(head_index, dtype=np.int64))
    axes = const("axes", np.array([2], dtype=np.int64))
    nodes += [
        helper.make_node("Gather", [x, idx], ["last_t"], axis=2),
        helper.make_node("ReduceMean", [x, axes], ["mean_t"], keepdims=0),
    ]
    parts = ["mean_t", "last_t"] if mean_first else ["last_t", "mean_t"]
    hw = rng.normal(0, 0.5, (2, 2 * c_in)).astype(np.float32)
    hb = rng.normal(0, 0.1, 2).astype(np.float32)
    one = const("one", np.array(1, dtype=np.int64))
    nodes += [
        helper.make_node("Concat", parts, ["cat"], axis=1),
        helper.make_node("Gemm", ["cat", const("hw", hw), const("hb", hb)], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["soft"], axis=1),
        helper.make_node("Gather", ["soft", one], ["prob_up"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tcn",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", f, WINDOW])],
        [
            helper.make_tensor_value_info("prob_up", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _full(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(
        model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
    )


def _streamed(student: StreamingStudent, windows: np.ndarray) -> np.ndarray:
    """Probabilities of windows[1:] the way the pipeline gets them: prepare, then step."""
    stream = student.new_stream()
    out = []
    for i in range(len(windows) - 1):
        stream.prepare(windows[i].astype(np.float64), i)
        out.append(stream.step(windows[i + 1][:, -1].astype(np.float64)))
    return np.array(out)


@pytest.mark.parametrize(
    ("channels", "dilations", "kernel"),
    [
        ([16, 16], [1, 2], 3),  # the committed student's shape
        ([8, 8, 8], [1, 2, 4], 3),  # identity skips in blocks 2 and 3
        ([24, 12], [1, 3], 2),  # a 1×1 skip in every block, kernel 2
        ([16, 16], [8, 16], 4),  # receptive field > window: early taps read padding
    ],
)
def test_step_equals_the_full_graph_on_consecutive_windows(
    channels: list[int], dilations: list[int], kernel: int, btc_5m: KlineTable
) -> None:
    model = tcn_onnx(channels, dilations, kernel)
    full = _full(model)
    student = StreamingStudent.build(model, session_options(), full)
    assert len(student.plan.blocks) == len(channels)
    t = btc_5m.slice(0, 600)
    feats = batch_features(t.open, t.high, t.low, t.close, t.volume)
    windows = make_windows(feats, window_ends(feats))  # (M, F, T) consecutive windows
    expected = np.asarray(full.run(["prob_up"], {"features": windows})[0])
    got = _streamed(student, windows)
    np.testing.assert_allclose(got, expected[1:], rtol=0, atol=1e-6)
    assert np.ptp(expected) > 0.05  # not a constant model


def test_head_may_concatenate_mean_before_last() -> None:
    model = tcn_onnx([16, 16], [1, 2], mean_first=True)
    full = _full(model)
    student = StreamingStudent.build(model, session_options(), full)
    rng = np.random.default_rng(3)
    cols = rng.standard_normal((N_FEATURES, WINDOW + 20)).astype(np.float32) * 0.01
    windows = np.stack([cols[:, i : i + WINDOW] for i in range(21)])
    got = _streamed(student, windows)
    expected = np.asarray(full.run(["prob_up"], {"features": windows})[0])
    np.testing.assert_allclose(got, expected[1:], rtol=0, atol=1e-6)


def test_the_step_graph_is_one_gemm_per_convolution() -> None:
    """What makes the close cheap: 5 nodes per block + 2 for the head, no Conv."""
    plan = plan_stream(tcn_onnx([16, 16], [1, 2]))
    ops = [n.op_type for n in step_model(plan).graph.node]
    assert len(ops) == 12 and "Conv" not in ops


@pytest.mark.parametrize(
    ("builder", "reason"),
    [
        (lambda: tcn_onnx([16, 16], [1, 2], pads=lambda k, d: [d, d]), "not causal"),
        (lambda: tcn_onnx([16, 16], [1, 2], head_index=0), "last time step"),
        (lambda: tcn_onnx([12, 12], [1, 2]), "first block has no 1×1 skip"),
    ],
)
def test_graphs_that_are_not_a_causal_tcn_are_refused(
    builder: Callable[[], onnx.ModelProto], reason: str
) -> None:
    with pytest.raises(StreamUnsupported, match=reason):
        plan_stream(builder())


def test_an_extra_node_is_refused() -> None:
    model = tcn_onnx([16, 16], [1, 2])
    # read block 0's output outside its residual path: the step would miss that dependency
    model.graph.node.append(helper.make_node("Identity", ["b0.out"], ["peek"]))
    model.graph.output.append(helper.make_tensor_value_info("peek", TensorProto.FLOAT, None))
    with pytest.raises(StreamUnsupported, match="read outside"):
        plan_stream(model)


def test_a_step_that_disagrees_with_the_full_graph_is_refused() -> None:
    """The load-time check compares against the session actually serving: a mismatch (here
    another model's weights) means no streaming, whatever the planner thought."""
    model = tcn_onnx([16, 16], [1, 2], seed=0)
    other = _full(tcn_onnx([16, 16], [1, 2], seed=1))
    with pytest.raises(StreamUnsupported, match="differs from the full graph"):
        StreamingStudent.build(model, session_options(), other)


def test_predictor_streams_a_tcn_and_serves_a_linear_model_whole(
    model_writer: Callable[..., Any], tmp_path: Path
) -> None:
    linear = Predictor.load(model_writer(tmp_path).onnx_path)
    assert linear.streaming is None
    assert linear.stream_note.startswith("full graph only:")
    if COMMITTED.exists():
        tcn = Predictor.load(COMMITTED)
        assert tcn.streaming is not None and tcn.stream_note.startswith("streaming")
