"""onnxruntime call paths the inference benchmark compares (CPU, one thread each).

* ``plain_run``: ``session.run`` with a feed dict — allocates the outputs on every call;
* ``bound_run``: I/O binding over a preallocated input and outputs, the public
  ``run_with_iobinding(binding)`` without RunOptions (what the service's predictor does).

Both fetch every output of the graph (one head or two: whatever the model exports), so a
student is timed as the whole graph it is, whatever its outputs are called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

F32 = npt.NDArray[np.float32]


def session_options() -> ort.SessionOptions:
    """The service's latency settings (one intra/inter-op thread, sequential, ENABLE_ALL)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def session(path: Path) -> ort.InferenceSession:
    """A session with :func:`session_options`."""
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def first_output(sess: ort.InferenceSession) -> str:
    """``prob_up`` when the graph has it (the students), else the first output."""
    names = [o.name for o in sess.get_outputs()]
    return "prob_up" if "prob_up" in names else names[0]


def output_names(sess: ort.InferenceSession) -> list[str]:
    """Every output of the graph, in its order."""
    return [o.name for o in sess.get_outputs()]


def plain_run(sess: ort.InferenceSession, x: F32) -> Callable[[], object]:
    """``sess.run(outputs, {input: x})``: new output arrays per call."""
    out = output_names(sess)
    feed = {sess.get_inputs()[0].name: x}
    run = sess.run

    def call() -> object:
        return run(out, feed)

    return call


def bound_run(sess: ort.InferenceSession, x: F32) -> tuple[Callable[[], object], F32]:
    """I/O binding over a private copy of ``x`` and preallocated outputs (every output of
    the graph); returns the call and the buffer of :func:`first_output`."""
    names = output_names(sess)
    buf = np.ascontiguousarray(x, dtype=np.float32).copy()
    probes = sess.run(names, {sess.get_inputs()[0].name: buf})
    binding = sess.io_binding()
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(buf))
    buffers = {}
    for name, probe in zip(names, probes, strict=True):
        y = np.zeros(np.shape(probe), dtype=np.asarray(probe).dtype)
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(y))
        buffers[name] = y
    run = sess.run_with_iobinding

    def call() -> object:
        return run(binding)

    return call, buffers[first_output(sess)]
