"""Tiny ONNX models with known outputs, built in the tests (no weights to download)."""

from __future__ import annotations

import numpy as np


def mean_model(path, *, channels=3, size=256, softmax=False) -> str:
    """An ONNX model whose score is the mean of its input tensor: a known function."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["score"]),
    ]
    inits = [axes, numpy_helper.from_array(np.array([1], np.int64), "one")]
    if softmax:
        nodes[-1] = helper.make_node("Unsqueeze", ["m", "one"], ["p"])
        nodes += [
            helper.make_node("Sub", ["ones", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["score"], axis=1),
        ]
        inits.append(numpy_helper.from_array(np.ones((1, 1), np.float32), "ones"))
    graph = helper.make_graph(
        nodes,
        "mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 2 if softmax else 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)
