"""The VNN-COMP front door: old opsets (Flatten 1, Dropout 7), rank-1 inputs, W @ v."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import absdsl
from absdsl.verification.onnx_io import OnnxError, onnxruntime_outputs, onnxruntime_session


def _save(nodes: list, inits: dict[str, np.ndarray], in_shape: list[int],
          out_shape: list[int], opset: int, path: Path, list_inits_as_inputs: bool = False
          ) -> Path:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)]
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    if list_inits_as_inputs:  # opset-8 exporters list every weight as a graph input too
        inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
                   for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             out_shape)], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 3 if opset <= 8 else 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _agrees_with_onnxruntime(path: Path, n: int = 8) -> absdsl.verification.onnx_io.OnnxNetwork:
    net = absdsl.load_onnx(path)
    x = torch.rand(n, *net.input_shape, generator=torch.Generator().manual_seed(0)) * 4 - 2
    ort = onnxruntime_outputs(onnxruntime_session(path), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(net(x).numpy(), ort, rtol=1e-5, atol=1e-5)
    return net


def test_opset8_flatten_dropout_matmul_like_acas_xu(tmp_path: Path) -> None:
    # the shape of ACAS Xu's MATLAB exports: Sub of a mean image, Flatten (version 1),
    # MatMul + Add, Relu, and a Dropout (version 7) as other opset-8 exports have
    rng = np.random.default_rng(0)
    inits = {"mean": rng.normal(size=(1, 1, 1, 5)), "W1": rng.normal(size=(5, 7)),
             "B1": rng.normal(size=(7,)), "W2": rng.normal(size=(7, 3)),
             "B2": rng.normal(size=(3,))}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["s"], name="sub"),
             helper.make_node("Flatten", ["s"], ["f"], name="flat", axis=1),
             helper.make_node("MatMul", ["f", "W1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "B1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("Dropout", ["r1"], ["d1"], name="drop", ratio=0.5),
             helper.make_node("MatMul", ["d1", "W2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "B2"], ["y"], name="add2")]
    path = _save(nodes, inits, [1, 1, 1, 5], [1, 3], 8, tmp_path / "acas_like.onnx",
                 list_inits_as_inputs=True)
    net = _agrees_with_onnxruntime(path)
    assert net.input_shape == (1, 1, 5) and net.num_outputs == 3
    # and the bounds hold at sampled points (the import is traced by the front end)
    lo = -torch.ones(1, 1, 1, 5, dtype=torch.float64)
    lb, ub = absdsl.compile(net.double(), "deeppoly")(lo, -lo)
    pts = torch.rand(500, 1, 1, 5, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ys = net(pts)
    assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all())


def test_dropout_at_opset_13_is_the_identity_even_as_the_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["y"], name="last_dropout")]
    path = _save(nodes, {"W": rng.normal(size=(4, 3)), "B": rng.normal(size=(4,))},
                 [1, 3], [1, 4], 13, tmp_path / "drop.onnx")
    net = _agrees_with_onnxruntime(path)
    assert net.num_outputs == 4


def test_rank1_input_with_matrix_times_vector(tmp_path: Path) -> None:
    # the competition's test nets: input [1] (no batch axis), W @ v with W on the left
    rng = np.random.default_rng(2)
    inits = {"W0": rng.normal(size=(3, 2)), "B0": rng.normal(size=(3,)),
             "W1": rng.normal(size=(1, 3)), "B1": rng.normal(size=(1,))}
    nodes = [helper.make_node("MatMul", ["W0", "x"], ["m0"]),
             helper.make_node("Add", ["m0", "B0"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["r0"]),
             helper.make_node("MatMul", ["W1", "r0"], ["m1"]),
             helper.make_node("Add", ["m1", "B1"], ["y"])]
    path = _save(nodes, inits, [2], [1], 14, tmp_path / "vec.onnx")
    net = _agrees_with_onnxruntime(path)
    assert net.input_shape == (2,) and net.num_outputs == 1


def test_rank1_input_with_vector_times_matrix(tmp_path: Path) -> None:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    path = _save(nodes, {"W": np.array([[2.0, -1.0]])}, [1], [2], 14, tmp_path / "nano.onnx")
    net = _agrees_with_onnxruntime(path)
    assert net.input_shape == (1,) and net.num_outputs == 2


def test_keras_style_nhwc_transpose_pad_maxpool_slice_gather(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    inits = {"W": rng.normal(size=(3, 2, 3, 3)), "B": rng.normal(size=(3,)),
             "G": rng.normal(size=(4, 3)), "GB": rng.normal(size=(3,))}
    ints = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64),
            "starts": np.array([0], dtype=np.int64), "ends": np.array([2], dtype=np.int64),
            "axes": np.array([1], dtype=np.int64), "one": np.array(1, dtype=np.int64)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="sequential/conv2d/BiasAdd__7",
                              perm=[0, 3, 1, 2]),
             helper.make_node("Pad", ["t", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "W", "B"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["m"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Slice", ["m", "starts", "ends", "axes"], ["s"], name="slice"),
             helper.make_node("Gather", ["s", "one"], ["g"], name="gather", axis=1),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G", "GB"], ["y"], name="fc")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 2])]
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    tensors += [numpy_helper.from_array(v, k) for k, v in ints.items()]
    graph = helper.make_graph(nodes, "keras", inputs, [helper.make_tensor_value_info(
        "y", TensorProto.FLOAT, [1, 3])], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path = tmp_path / "keras.onnx"
    onnx.save(model, str(path))
    net = _agrees_with_onnxruntime(path)
    assert net.input_shape == (4, 4, 2) and net.num_outputs == 3
    lo = -torch.ones(1, 4, 4, 2, dtype=torch.float64)
    for domain in ("box", "deeppoly"):
        lb, ub = absdsl.compile(net.double(), domain)(lo, -lo)
        pts = torch.rand(300, 4, 4, 2, dtype=torch.float64) * 2 - 1
        with torch.no_grad():
            ys = net(pts)
        assert bool((ys >= lb - 1e-9).all() and (ys <= ub + 1e-9).all()), domain


def test_transpose_of_the_batch_axis_names_the_node(tmp_path: Path) -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["y"], name="swap", perm=[1, 0])]
    path = _save(nodes, {}, [1, 3], [3, 1], 13, tmp_path / "swap.onnx")
    with pytest.raises(OnnxError, match=r"ONNX node 'swap' \(Transpose\).*batch axis"):
        absdsl.load_onnx(path)
