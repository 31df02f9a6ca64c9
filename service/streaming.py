"""Streaming inference for the TCN student: most of the next candle's work, done before it closes.

The student is a causal TCN: every convolution pads on the left only, so the activation at
window position t depends on positions ≤ t alone, and the head reads the last position and
the mean over time. When candle n+1 closes, its window is the previous window shifted by one
column plus the new column; everything except the newest column's *cone* — one column per
layer — is known as soon as candle n's signal is stored. So:

* ``prepare`` (after a signal is stored, off the frame → signal path) runs the exported graph
  itself (a copy whose outputs are the intermediate activations) on the shifted window and
  folds every known tap of the next window's last-position convolutions into per-layer
  partial sums, plus the head's time-mean of the known positions;
* ``step`` (on the close) runs a 12-node graph that adds the new column's taps to those
  partials: one small Gemm per convolution instead of five convolutions over 32 positions.

Both halves run in onnxruntime on the verified model's own weights. :func:`plan_stream` walks
the graph and accepts only the exported TCN shape (normalise → residual blocks of
left-padded convolutions → last/mean head → softmax); anything else raises
:class:`StreamUnsupported` and the full graph serves, as it does for the first window after a
start or reload. :meth:`StreamingStudent.build` also checks the step against the full graph on
synthetic windows and refuses to stream if they differ by more than ``STEP_TOLERANCE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
STEP_TOLERANCE = 1e-5  # |p_step - p_full| allowed at load (real windows: ≤ 4e-7 measured)
_CHECK_WINDOWS = 64
_OPSET = 18


class StreamUnsupported(Exception):
    """The graph is not a streamable TCN; the message says what did not match."""


@dataclass(frozen=True)
class ConvPlan:
    """One left-padded causal Conv1d: weight (C_out, C_in, k), bias (C_out,)."""

    weight: F32
    bias: F32
    dilation: int
    input_name: str  # tensor the convolution reads (its activations feed the partials)

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2])


@dataclass(frozen=True)
class BlockPlan:
    """relu(conv2(relu(conv1(x))) + skip(x)); ``skip`` None means the identity."""

    conv1: ConvPlan
    conv2: ConvPlan
    skip: tuple[F32, F32] | None  # 1×1 conv weight (C_out, C_in), bias (C_out,)
    output_name: str


@dataclass(frozen=True)
class StreamPlan:
    """What :func:`plan_stream` read from the graph."""

    input_name: str
    n_features: int
    window: int
    mean: F32  # (F,) normalisation
    std: F32  # (F,)
    blocks: tuple[BlockPlan, ...]
    head_last: F32  # (C,) weight of the last position on logit(up) - logit(down)
    head_mean: F32  # (C,) weight of the time-mean on it
    head_bias: float


# ------------------------------------------------------------------------ reading the graph


class _Graph:
    """Producers, consumers and initializers of an ONNX graph, and which nodes were read."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.nodes = list(g.node)
        self.seen: set[int] = set()

    def only(self, tensor: str, op: str) -> onnx.NodeProto:
        """The single consumer of ``tensor``, which must be an ``op``."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op:
            found = [n.op_type for n in users]
            raise StreamUnsupported(f"{tensor!r} feeds {found}, expected one {op}")
        return self.take(users[0])

    def take(self, node: onnx.NodeProto) -> onnx.NodeProto:
        self.seen.add(id(node))
        return node

    def init(self, name: str, what: str) -> F32:
        if name not in self.inits:
            raise StreamUnsupported(f"{what} {name!r} is not a constant")
        return np.asarray(self.inits[name], dtype=np.float32)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv(g: _Graph, node: onnx.NodeProto, input_name: str) -> ConvPlan:
    """A causal Conv1d: group 1, stride 1, left padding (k - 1)·d only."""
    a = _attrs(node)
    w = g.init(node.input[1], "conv weight")
    b = g.init(node.input[2], "conv bias") if len(node.input) > 2 else np.zeros(w.shape[0])
    if w.ndim != 3:
        raise StreamUnsupported(f"{node.name or node.output[0]}: not a 1-D convolution")
    k = int(w.shape[2])
    d = int(a.get("dilations", [1])[0])
    causal = [(k - 1) * d, 0]
    if (
        a.get("group", 1) != 1
        or list(a.get("strides", [1])) != [1]
        or list(a.get("pads", [0, 0])) != causal
        or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        raise StreamUnsupported(f"conv on {input_name!r} is not causal (pads {causal}, stride 1)")
    return ConvPlan(w, np.asarray(b, dtype=np.float32), d, input_name)


def _block(g: _Graph, x: str) -> BlockPlan:
    users = g.consumers.get(x, [])
    convs = [n for n in users if n.op_type == "Conv"]
    wide = [n for n in convs if g.init(n.input[1], "conv weight").shape[2] > 1]
    ones = [n for n in convs if n not in wide]
    if len(wide) != 1 or len(ones) > 1:
        raise StreamUnsupported(f"{x!r} does not start a residual block")
    conv1 = _conv(g, g.take(wide[0]), x)
    h = g.only(wide[0].output[0], "Relu").output[0]
    conv2_node = g.only(h, "Conv")
    conv2 = _conv(g, conv2_node, h)
    add = g.only(conv2_node.output[0], "Add")
    other = add.input[1] if add.input[0] == conv2_node.output[0] else add.input[0]
    skip: tuple[F32, F32] | None = None
    if ones:
        s = g.take(ones[0])
        sc = _conv(g, s, x)
        if other != s.output[0] or g.consumers.get(s.output[0]) != [add]:
            raise StreamUnsupported(f"the 1×1 conv on {x!r} does not feed the block's Add")
        skip = (np.ascontiguousarray(sc.weight[:, :, 0]), sc.bias)
    elif other != x:
        raise StreamUnsupported(f"the block on {x!r} adds {other!r}, not its input")
    readers = [wide[0], *ones] if ones else [wide[0], add]
    if sorted(map(id, users)) != sorted(map(id, readers)):
        raise StreamUnsupported(f"{x!r} is read outside its residual block")
    out = g.only(add.output[0], "Relu").output[0]
    return BlockPlan(conv1, conv2, skip, out)


def _scalar_index(g: _Graph, node: onnx.NodeProto) -> int:
    idx = np.asarray(g.inits.get(node.input[1], np.array([])))
    if idx.size != 1:
        raise StreamUnsupported(f"Gather {node.output[0]!r} does not take one index")
    return int(idx.reshape(-1)[0])


def plan_stream(model: onnx.ModelProto) -> StreamPlan:
    """Read a streamable TCN student out of ``model``; raises :class:`StreamUnsupported`."""
    g = _Graph(model)
    graph_inputs = [i for i in model.graph.input if i.name not in g.inits]
    if len(graph_inputs) != 1:
        raise StreamUnsupported("the graph has more than one input")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[1].dim_value or not dims[2].dim_value:
        raise StreamUnsupported("the input is not (batch, F, T) with fixed F and T")
    name = graph_inputs[0].name
    n_features, window = int(dims[1].dim_value), int(dims[2].dim_value)
    sub = g.only(name, "Sub")
    div = g.only(sub.output[0], "Div")
    mean = g.init(sub.input[1], "normalisation mean").reshape(-1)
    std = g.init(div.input[1], "normalisation std").reshape(-1)
    if mean.shape != (n_features,) or std.shape != (n_features,):
        raise StreamUnsupported("normalisation is not per feature")
    x = div.output[0]
    blocks: list[BlockPlan] = []
    while not {n.op_type for n in g.consumers.get(x, [])} <= {"Gather", "ReduceMean"}:
        blocks.append(_block(g, x))
        x = blocks[-1].output_name
    if not blocks:
        raise StreamUnsupported("no convolution blocks")
    if blocks[0].skip is None:
        raise StreamUnsupported("the first block has no 1×1 skip (normalisation cannot fold)")
    head_last, head_mean, head_bias = _head(g, x, window)
    unread = [n.op_type for n in g.nodes if id(n) not in g.seen]
    if unread:
        raise StreamUnsupported(f"nodes outside the TCN pattern: {unread}")
    return StreamPlan(
        name, n_features, window, mean, std, tuple(blocks), head_last, head_mean, head_bias
    )


def _head(g: _Graph, x: str, window: int) -> tuple[F32, F32, float]:
    """last = x[:, :, -1], avg = mean over time → concat → Gemm (2 logits) → softmax → [:, 1]."""
    users = g.consumers.get(x, [])
    last = [n for n in users if n.op_type == "Gather"]
    avg = [n for n in users if n.op_type == "ReduceMean"]
    if len(last) != 1 or len(avg) != 1 or len(users) != 2:
        raise StreamUnsupported("the head does not read the last position and the time-mean")
    gl, ra = g.take(last[0]), g.take(avg[0])
    if _attrs(gl).get("axis") != 2 or _scalar_index(g, gl) not in (-1, window - 1):
        raise StreamUnsupported("the head's Gather is not the last time step")
    ra_attrs = _attrs(ra)
    axes = list(ra_attrs.get("axes", []))
    if len(ra.input) > 1:
        axes = [int(v) for v in np.asarray(g.inits.get(ra.input[1], [])).reshape(-1)]
    if axes not in ([2], [-1]) or ra_attrs.get("keepdims", 1) != 0:
        raise StreamUnsupported("the head's ReduceMean is not over time")
    cat = g.only(gl.output[0], "Concat")
    if g.consumers.get(ra.output[0]) != [cat] or _attrs(cat).get("axis") not in (1, -1):
        raise StreamUnsupported("the head does not concatenate last and mean")
    gemm = g.only(cat.output[0], "Gemm")
    ga = _attrs(gemm)
    if ga.get("transA", 0) != 0 or ga.get("transB", 0) != 1 or ga.get("alpha", 1.0) != 1.0:
        raise StreamUnsupported("the head Gemm is not x·Wᵀ + b")
    w = g.init(gemm.input[1], "head weight")  # (2, 2C)
    b = g.init(gemm.input[2], "head bias") if len(gemm.input) > 2 else np.zeros(2, np.float32)
    if float(ga.get("beta", 1.0)) != 1.0 or w.shape[0] != 2 or b.shape != (2,):
        raise StreamUnsupported("the head is not two logits")
    soft = g.only(gemm.output[0], "Softmax")
    pick = g.only(soft.output[0], "Gather")
    if _attrs(soft).get("axis", -1) not in (1, -1) or _attrs(pick).get("axis") != 1:
        raise StreamUnsupported("the output is not softmax(logits)[:, 1]")
    if _scalar_index(g, pick) != 1:
        raise StreamUnsupported("the output is not the up-class probability")
    c = w.shape[1] // 2
    diff = w[1] - w[0]  # softmax(l)[1] = sigmoid(l1 - l0)
    first, second = diff[:c], diff[c:]
    last_w, mean_w = (first, second) if cat.input[0] == gl.output[0] else (second, first)
    return last_w.astype(np.float32), mean_w.astype(np.float32), float(b[1] - b[0])


# ------------------------------------------------------------------------ building the graphs


def prefix_model(model: onnx.ModelProto, plan: StreamPlan) -> onnx.ModelProto:
    """The exported graph, extended to output the step's partials for the *next* window.

    Input: the next window's known columns in positions 0..T-2 (position T-1 is never read:
    every layer is causal, and only positions ≤ T-2 are gathered). For each convolution the
    known taps of its position-(T-1) output are gathered and folded by one Gemm (weights of
    taps 0..k-2, constant = bias plus the folded normalisation or skip bias); the head's part
    is the sum of the last block over positions 0..T-2, weighted by the mean's share.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    del g.output[:]  # the original head is pruned by onnxruntime
    t = plan.window

    def const(name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    flat = const("stream.flat", [1, -1], np.int64)
    for i, (act, taps) in enumerate(_partial_taps(plan)):
        name = _partial_name(i)
        g.node.extend(
            [
                helper.make_node(
                    "Gather",
                    [act, const(f"stream.{name}.at", taps.positions, np.int64)],
                    [f"stream.{name}.taps"],  # (1, C_in, taps)
                    axis=2,
                ),
                helper.make_node("Reshape", [f"stream.{name}.taps", flat], [f"stream.{name}.x"]),
                helper.make_node(
                    "Gemm",
                    [
                        f"stream.{name}.x",
                        const(f"stream.{name}.w", taps.weight),
                        const(f"stream.{name}.c", taps.constant),
                    ],
                    [name],  # (1, C_out)
                    transB=1,
                ),
            ]
        )
        width = int(taps.weight.shape[0])
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, width]))
    last = plan.blocks[-1].output_name
    g.node.extend(
        [
            helper.make_node(
                "Slice",
                [
                    last,
                    const("stream.s0", [0], np.int64),
                    const("stream.s1", [t - 1], np.int64),
                    const("stream.axis", [2], np.int64),
                ],
                ["stream.known"],  # (1, C, T-1)
            ),
            helper.make_node(
                "ReduceSum", ["stream.known", "stream.axis"], ["stream.sum"], keepdims=0
            ),
            helper.make_node(
                "Gemm",
                [
                    "stream.sum",
                    const("stream.hw", (plan.head_mean / t)[None]),
                    const("stream.hb", [plan.head_bias]),
                ],
                ["ph"],  # (1, 1)
                transB=1,
            ),
        ]
    )
    g.output.append(helper.make_tensor_value_info("ph", TensorProto.FLOAT, [1, 1]))
    onnx.checker.check_model(out, full_check=True)
    return out


def _partial_name(i: int) -> str:
    """Convolution i's partial: conv1 / conv2 of block i // 2 (the step graph's inputs)."""
    return f"p{i % 2 + 1}_{i // 2}"


def step_model(plan: StreamPlan) -> onnx.ModelProto:
    """(1, F) raw column + per-layer partials → (1, 1) probability of an up candle.

    Normalisation folds into the first block's newest-tap weights (its partials carry the
    constant), and the head collapses to one Gemm on the last position: mean over time is
    (known sum + newest) / T, and softmax(l)[1] = sigmoid(l1 - l0).
    """
    inv_std = 1.0 / plan.std
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, plan.n_features])]

    def const(name: str, value: npt.ArrayLike) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def partial(name: str, width: int) -> str:
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, width]))
        return name

    x = "x"
    for b, blk in enumerate(plan.blocks):
        c = blk.conv1.weight.shape[0]
        w1 = blk.conv1.weight[:, :, -1] * (inv_std if b == 0 else 1.0)  # (C, C_in)
        w2 = blk.conv2.weight[:, :, -1]
        nodes.append(
            helper.make_node(
                "Gemm", [x, const(f"w1_{b}", w1), partial(f"p1_{b}", c)], [f"a{b}"], transB=1
            )
        )
        nodes.append(helper.make_node("Relu", [f"a{b}"], [f"h{b}"]))
        if blk.skip is not None:
            ws = blk.skip[0] * (inv_std if b == 0 else 1.0)
            nodes.append(
                helper.make_node(
                    "Gemm", [x, const(f"ws_{b}", ws), partial(f"p2_{b}", c)], [f"s{b}"], transB=1
                )
            )
        else:
            nodes.append(helper.make_node("Add", [x, partial(f"p2_{b}", c)], [f"s{b}"]))
        nodes.append(
            helper.make_node("Gemm", [f"h{b}", const(f"w2_{b}", w2), f"s{b}"], [f"r{b}"], transB=1)
        )
        nodes.append(helper.make_node("Relu", [f"r{b}"], [f"o{b}"]))
        x = f"o{b}"
    head = plan.head_last + plan.head_mean / plan.window
    nodes.append(
        helper.make_node("Gemm", [x, const("wd", head[None]), partial("ph", 1)], ["d"], transB=1)
    )
    nodes.append(helper.make_node("Sigmoid", ["d"], ["prob_up"]))
    graph = helper.make_graph(
        nodes,
        "student_step",
        inputs,
        [helper.make_tensor_value_info("prob_up", TensorProto.FLOAT, [1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class _Taps:
    """The known taps of one convolution's newest output: weights over the gathered inputs."""

    positions: npt.NDArray[np.intp]  # window positions of taps 0..k-2 that are not padding
    weight: F32  # (C_out, C_in · len(positions)), gathered input raveled channel-major
    constant: F32  # (C_out,) bias, plus the folded normalisation or skip bias


def _taps(conv: ConvPlan, window: int, constant: F32) -> _Taps:
    k, d = conv.kernel, conv.dilation
    pos = [window - 1 - (k - 1 - j) * d for j in range(k - 1)]
    keep = [j for j, p in enumerate(pos) if p >= 0]  # earlier taps read the zero padding
    if not keep:
        raise StreamUnsupported(f"dilation {d} reaches past the window: no known taps")
    w = conv.weight[:, :, keep].reshape(conv.weight.shape[0], -1)
    return _Taps(
        np.asarray([pos[j] for j in keep], dtype=np.intp),
        np.ascontiguousarray(w, dtype=np.float32),
        np.asarray(conv.bias + constant, dtype=np.float32),
    )


def _partial_taps(plan: StreamPlan) -> list[tuple[str, _Taps]]:
    """(activation read, taps) per convolution, in the step graph's input order."""
    inv_std = 1.0 / plan.std
    out: list[tuple[str, _Taps]] = []
    for b, blk in enumerate(plan.blocks):
        c1 = np.zeros(blk.conv1.weight.shape[0], np.float32)
        c2 = np.zeros_like(c1)
        if b == 0:  # the step reads raw x: W·(x - m)/s = (W/s)·x - (W/s)·m
            c1 = -(blk.conv1.weight[:, :, -1] * inv_std) @ plan.mean
        if blk.skip is not None:
            ws = blk.skip[0] * (inv_std if b == 0 else 1.0)
            c2 = blk.skip[1] - (ws @ plan.mean if b == 0 else 0.0)
        out.append((blk.conv1.input_name, _taps(blk.conv1, plan.window, c1)))
        out.append((blk.conv2.input_name, _taps(blk.conv2, plan.window, c2)))
    return out


# ------------------------------------------------------------------------ running them


class StudentStream:
    """One symbol's prepared partials, bound to the step graph; valid for one window push."""

    __slots__ = (
        "_x0",
        "_y0",
        "binding",
        "head",
        "owner",
        "partials",
        "prefix_binding",
        "ready_for",
        "x",
        "y",
    )

    def __init__(self, owner: StreamingStudent, n_features: int, widths: list[int]) -> None:
        self.owner = owner
        self.x = np.zeros((1, n_features), dtype=np.float32)  # (1, F) the new column
        self.partials = [np.zeros((1, c), dtype=np.float32) for c in widths]  # (1, C) each
        self.head = np.zeros((1, 1), dtype=np.float32)
        self.y = np.zeros((1, 1), dtype=np.float32)
        self.ready_for = -1  # FeatureWindow.pushes at which step() is valid
        self._x0 = self.x.reshape(-1)
        self._y0 = self.y.reshape(-1)
        # the prefix graph writes the partials where the step graph reads them
        pre = self.prefix_binding = owner.prefix_session.io_binding()
        pre.bind_ortvalue_input(owner.plan.input_name, owner.prefix_input)
        bind = self.binding = owner.step_session.io_binding()
        bind.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(self.x))
        for i, arr in enumerate([*self.partials, self.head]):
            name = _partial_name(i) if i < len(self.partials) else "ph"
            value = ort.OrtValue.ortvalue_from_numpy(arr)
            pre.bind_ortvalue_output(name, value)
            bind.bind_ortvalue_input(name, value)
        bind.bind_ortvalue_output("prob_up", ort.OrtValue.ortvalue_from_numpy(self.y))

    def prepare(self, window: F64, pushes: int) -> None:
        """Fold the current (F, T) window's known part of the *next* window into partials;
        ``pushes`` counts the window's columns so far (the step is valid for the next one)."""
        self.owner.prepare_into(self, window)
        self.ready_for = pushes + 1

    def warm(self) -> None:
        """Run the step on the buffers as they are, output unread: between closes the
        keep-warm tick keeps this symbol's binding hot (cold, its step ran ~2× slower)."""
        self.owner.step_session.run_with_iobinding(self.binding)

    def step(self, column: F64) -> float:
        """Probability of an up candle for the prepared window plus ``column`` (F,)."""
        np.copyto(self._x0, column, casting="unsafe")
        self.owner.step_session.run_with_iobinding(self.binding)
        return float(self._y0[0])


class StreamingStudent:
    """The prefix and step sessions of one verified student, shared by its symbols' streams."""

    def __init__(
        self, plan: StreamPlan, model: onnx.ModelProto, options: ort.SessionOptions
    ) -> None:
        self.plan = plan
        providers = ["CPUExecutionProvider"]
        try:
            prefix = prefix_model(model, plan).SerializeToString()
            step = step_model(plan).SerializeToString()
            self.prefix_session = ort.InferenceSession(prefix, options, providers=providers)
            self.step_session = ort.InferenceSession(step, options, providers=providers)
        except Exception as exc:  # onnx / onnxruntime raise their own types
            raise StreamUnsupported(f"cannot build the streaming graphs: {exc}") from None
        f, t = plan.n_features, plan.window
        # (1, F, T) shared prefix input; column T-1 stays 0 and is never read (causal)
        self._pre_x = np.zeros((1, f, t), dtype=np.float32)
        self._pre_cols = self._pre_x[0, :, : t - 1]
        self.prefix_input = ort.OrtValue.ortvalue_from_numpy(self._pre_x)
        self._widths = [taps.weight.shape[0] for _, taps in _partial_taps(plan)]

    @classmethod
    def build(
        cls, model: onnx.ModelProto, options: ort.SessionOptions, full: ort.InferenceSession
    ) -> StreamingStudent:
        """Plan, build and check against the ``full`` session; raises StreamUnsupported."""
        plan = plan_stream(model)
        student = cls(plan, model, options)
        worst = student.max_difference(full)
        if not worst <= STEP_TOLERANCE:
            raise StreamUnsupported(
                f"the step differs from the full graph by {worst:.2e} (> {STEP_TOLERANCE:g})"
            )
        return student

    def new_stream(self) -> StudentStream:
        """Fresh per-symbol state (not prepared: its first window goes through the full graph)."""
        return StudentStream(self, self.plan.n_features, self._widths)

    def prepare_into(self, stream: StudentStream, window: F64) -> None:
        """Partials for the window after ``window`` (F, T): its columns 1..T-1 come first."""
        np.copyto(self._pre_cols, window[:, 1:], casting="unsafe")
        self.prefix_session.run_with_iobinding(stream.prefix_binding)  # → stream's partials

    def max_difference(self, full: ort.InferenceSession, seed: int = 0) -> float:
        """Largest |p_step - p_full| over consecutive synthetic windows (normalised ~ N(0, 1))."""
        plan = self.plan
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((plan.n_features, plan.window + _CHECK_WINDOWS))
        cols = plan.mean[:, None] + plan.std[:, None] * z  # (F, T + N) raw feature columns
        windows = np.stack(
            [cols[:, i : i + plan.window] for i in range(_CHECK_WINDOWS + 1)]
        ).astype(np.float32)  # (N + 1, F, T)
        out_name = full.get_outputs()[0].name
        expected = np.asarray(full.run([out_name], {plan.input_name: windows})[0]).reshape(-1)
        stream = self.new_stream()
        worst = 0.0
        for i in range(_CHECK_WINDOWS):
            stream.prepare(windows[i].astype(np.float64), i)
            got = stream.step(windows[i + 1][:, -1].astype(np.float64))
            diff = abs(got - float(expected[i + 1]))
            worst = diff if not diff <= worst else worst  # NaN wins
        return worst
